"""U-Net shapes and conditioning paths: null condition == unconditional input, attribute parts independent."""

from __future__ import annotations

import pytest
import torch

from diffguide.conditioning import null_attributes, null_condition
from diffguide.data.attributes import drop_attributes
from diffguide.models.nets.unet import UNet


def _randomise_output(net):
    # the output conv is zero-initialised (the net starts as the identity denoiser); give it weights so
    # outputs depend on the input and condition
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    for module in net.modules():
        if hasattr(module, "conv2"):
            torch.nn.init.normal_(module.conv2.weight, std=0.1)
    return net.eval()


@pytest.mark.parametrize(
    "channels, size, mult, attn",
    [(1, 8, (1, 2), (4,)), (3, 24, (1, 2, 2), (6,)), (1, 28, (1, 2, 2), (7,)), (1, 7, (1, 2), ())],
)
def test_output_has_input_shape(channels, size, mult, attn):
    torch.manual_seed(0)
    net = _randomise_output(
        UNet(channels, size, channels=8, channel_mult=mult, num_blocks=1, attn_resolutions=attn)
    )
    x = torch.randn(3, channels, size, size)
    out = net(x, torch.rand(3), None)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, torch.zeros_like(out))


def test_attention_only_where_asked():
    net = UNet(1, 8, channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))
    from diffguide.models.nets.unet import Attention

    n_attn = sum(isinstance(m, Attention) for m in net.modules())
    # level 1 (4x4): 1 down block + 2 up blocks, plus the middle attention
    assert n_attn == 4
    assert sum(isinstance(m, Attention) for m in UNet(1, 8, channels=8, attn_resolutions=()).modules()) == 1


def test_class_null_equals_unconditional_and_classes_differ():
    torch.manual_seed(0)
    net = _randomise_output(UNet(1, 8, channels=8, num_blocks=1, num_classes=10, embedding="fourier"))
    x, c = torch.randn(4, 1, 8, 8), torch.rand(4)
    labels = torch.tensor([0, 3, 7, 9])
    uncond = net(x, c, None)
    assert torch.equal(net(x, c, null_condition(labels, 10)), uncond)
    assert not torch.allclose(net(x, c, labels), uncond)
    # a scalar c_noise broadcasts like a per-sample one
    assert torch.allclose(net(x, c[:1].expand(4), labels), net(x, c[0], labels))


def test_attribute_parts_null_and_independent():
    torch.manual_seed(0)
    net = _randomise_output(UNet(3, 8, channels=8, num_blocks=1, num_types=5, num_accessories=6))
    x, c = torch.randn(2, 3, 8, 8), torch.rand(2)
    cond = {
        "type": torch.tensor([3, 4]),
        "accessories": torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]]),
    }
    uncond = net(x, c, None)
    assert torch.equal(net(x, c, null_attributes(cond)), uncond)
    assert torch.equal(net(x, c, null_condition(cond, 5)), uncond)
    full = net(x, c, cond)
    type_only = net(x, c, {"type": cond["type"], "accessories": -torch.ones(2, 6)})
    acc_only = net(x, c, {"type": torch.tensor([-1, -1]), "accessories": cond["accessories"]})
    for a, b in [
        (full, uncond),
        (type_only, uncond),
        (acc_only, uncond),
        (type_only, full),
        (acc_only, full),
    ]:
        assert not torch.allclose(a, b)
    # "no accessories" (all-zero row) is a real condition, distinct from the null row
    zero_acc = net(x, c, {"type": torch.tensor([-1, -1]), "accessories": torch.zeros(2, 6)})
    assert not torch.allclose(zero_acc, uncond)


def test_channels_last_gives_same_output():
    torch.manual_seed(0)
    net = _randomise_output(UNet(3, 8, channels=8, num_blocks=1, attn_resolutions=(4,), num_classes=3))
    x, c, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 2])
    ref = net(x, c, y)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.to(memory_format=torch.channels_last), c, y)
    assert torch.allclose(out, ref, atol=1e-5)


def test_drop_attributes_each_part_independently():
    g = torch.Generator().manual_seed(0)
    n = 4000
    labels = {"type": torch.randint(0, 5, (n,)), "accessories": (torch.rand(n, 7) < 0.3).float()}
    assert drop_attributes(labels, 0.0, g) is labels
    all_null = drop_attributes(labels, 1.0, g)
    assert (all_null["type"] == -1).all() and (all_null["accessories"] == -1).all()
    dropped = drop_attributes(labels, 0.5, g)
    t_null = dropped["type"] == -1
    a_null = (dropped["accessories"] == -1).all(1)
    a_partial = (dropped["accessories"] == -1).any(1) & ~a_null
    assert not a_partial.any()  # a row is dropped whole
    for frac in (t_null.float().mean(), a_null.float().mean(), (t_null & ~a_null).float().mean()):
        assert 0.2 < float(frac) < 0.6
    assert abs(float((t_null & a_null).float().mean()) - 0.25) < 0.04  # independent: 0.5 * 0.5


def test_build_network_for_image_data():
    from diffguide.config import apply_overrides, load_preset
    from diffguide.data import make_dataset
    from diffguide.models.build import build_network

    cfg = apply_overrides(load_preset("digits-cfg"), ["model.channels=8"])
    ds = make_dataset(cfg.data)
    net = build_network(cfg, ds)
    assert isinstance(net, UNet) and net.cond_emb.num_classes == 10
    x, y = ds.sample_batch(2, torch.Generator().manual_seed(0))
    assert net(x, torch.zeros(2), y).shape == (2, 1, 8, 8)


def _without_map(net: UNet) -> UNet:
    """The same U-Net without its condition map: conv_in keeps the image channels' weights only."""
    plain = UNet(3, 8, channels=8, num_blocks=1, num_types=5, num_accessories=6)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("cond_map.")}
    state["conv_in.weight"] = state["conv_in.weight"][:, :3]
    plain.load_state_dict(state)
    return plain.eval()


def test_condition_map_starts_as_the_plain_unet_and_adds_one_template_per_active_entry():
    torch.manual_seed(0)
    net = _randomise_output(
        UNet(3, 8, channels=8, num_blocks=1, num_types=5, num_accessories=6, cond_map_channels=2)
    )
    x, c = torch.randn(3, 3, 8, 8), torch.rand(3)
    cond = {
        "type": torch.tensor([3, -1, 0]),
        "accessories": torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1], [-1.0] * 6]),
    }
    # zero-initialised templates: the extra input channels are zero, so the net is the plain U-Net
    assert torch.allclose(net(x, c, cond), _without_map(net)(x, c, cond), atol=1e-6)
    torch.nn.init.normal_(net.cond_map.templates)
    t = net.cond_map.templates.reshape(-1, 2, 8, 8)  # rows: 5 types, null type, 6 accessories, null flag
    expected = torch.stack([t[3] + t[6 + 0] + t[6 + 3], t[5] + t[6 + 5], t[0] + t[12]])
    maps = net.cond_map(net.cond_emb.indicators(cond, 3, "cpu"))
    assert torch.allclose(maps, expected, atol=1e-6)
    # with templates, the condition reaches the output through the map too
    assert not torch.allclose(net(x, c, cond), _without_map(net)(x, c, cond), atol=1e-4)
    # null parts stay null: None == all-null dict, as without a map
    assert torch.equal(net(x, c, None), net(x, c, null_attributes(cond)))


def test_condition_map_for_class_labels_is_the_class_template():
    net = UNet(1, 8, channels=8, num_blocks=1, num_classes=4, cond_map_channels=1)
    torch.nn.init.normal_(net.cond_map.templates)
    maps = net.cond_map(net.cond_emb.indicators(torch.tensor([2, 4]), 2, "cpu"))  # 4 = the null class
    assert torch.equal(maps[:, 0], net.cond_map.templates[[2, 4]].reshape(2, 8, 8))
    assert UNet(1, 8, channels=8, cond_map_channels=3).cond_map is None  # unconditional: no map


def test_bad_condition_map_width_is_refused_before_training(tmp_path):
    from tests.helpers import run_cli

    out = tmp_path / "runs"
    r = run_cli("train", "--preset", "digits-cfg", "--set", "model.cond_map_channels=-2", "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "diffguide train: error: model.cond_map_channels must be an integer >= 0 (0: no condition map; 4 is a "
        "good start), got -2"
    ]
    assert not out.exists()
