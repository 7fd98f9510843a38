"""The field's guidance methods: identities against plain CFG, closed forms, and parity with diffusers'
guider implementations on random tensors (after the documented conversion of parameters)."""

from __future__ import annotations

import math

import pytest
import torch

from diffguide.errors import ConfigError
from diffguide.guidance import NullConditioned, classifier_free_guidance, guidance
from diffguide.guidance.cfgpp import CFGPlusPlus, check_sampler, sample_euler_cfgpp
from diffguide.guidance.methods import (
    APG,
    TCFG,
    CFGZeroStar,
    DynamicThresholding,
    MamboG,
    RandomConditioned,
    ScheduledGuidance,
    WeightSchedule,
    apg_from_diffusers,
)
from diffguide.samplers import sample_euler

guiders = pytest.importorskip("diffusers.guiders")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def points(tree, n=64, sigma=0.7, seed=0):
    x0, comp = tree.sample(n, generator=gen(seed))
    x = x0 + sigma * torch.randn(x0.shape, generator=gen(seed + 1), dtype=x0.dtype)
    return x, torch.full((n,), sigma, dtype=x.dtype), tree.classes[comp]


def pair(n=8, shape=(4, 6, 6), seed=0, dtype=torch.float64):
    a = torch.randn(n, *shape, generator=gen(seed), dtype=dtype)
    b = a + 0.5 * torch.randn(n, *shape, generator=gen(seed + 1), dtype=dtype)
    return a, b


def combine(method, main, guide, w, sigma=None):
    w = torch.full((main.shape[0],) + (1,) * (main.ndim - 1), float(w), dtype=main.dtype)
    return method.combine(main, guide, w, sigma if sigma is not None else torch.ones(main.shape[0]))


def idle(x, sigma, cond=None):
    return x


# ------------------------------------------------------------------ identities on an exact mixture


@pytest.mark.parametrize("space", ["x0", "eps"])
def test_apg_with_eta_1_and_no_threshold_or_momentum_is_cfg(tree, space):
    x, sigma, labels = points(tree)
    cfg = classifier_free_guidance(tree, 3.0, tree.num_classes)(x, sigma, labels)
    apg = APG(tree, NullConditioned(tree, tree.num_classes), 3.0, space=space)(x, sigma, labels)
    torch.testing.assert_close(apg, cfg, rtol=1e-12, atol=1e-12)


def test_constant_schedule_is_plain_guidance_and_step_is_the_interval(tree):
    x, _, labels = points(tree)
    guide = NullConditioned(tree, tree.num_classes)
    for s in (0.05, 0.7, 3.0):
        sigma = torch.full((len(x),), s, dtype=x.dtype)
        plain = guidance(tree, guide, 2.5)(x, sigma, labels)
        scheduled = ScheduledGuidance(tree, guide, 2.5, schedule=WeightSchedule("constant"))
        assert torch.equal(scheduled(x, sigma, labels), plain)
        step = ScheduledGuidance(tree, guide, 2.5, schedule=WeightSchedule("step", 0.3, 1.0))
        assert torch.equal(
            step(x, sigma, labels), guidance(tree, guide, 2.5, interval=(0.3, 1.0))(x, sigma, labels)
        )


def test_linear_and_cosine_schedules_run_from_no_guidance_to_full():
    sigma = torch.tensor([100.0, 10.0, math.sqrt(10.0), 1.0, 0.01], dtype=torch.float64)
    lin, cos = WeightSchedule("linear", 1.0, 10.0), WeightSchedule("cosine", 1.0, 10.0)
    torch.testing.assert_close(lin(sigma), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(cos(sigma), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0], dtype=torch.float64))
    u = torch.tensor(0.25, dtype=torch.float64)  # cosine is (1 - cos(pi u)) / 2 between the ends
    mid = torch.exp(math.log(10.0) - u * math.log(10.0))
    assert float(cos(mid[None])) == pytest.approx(float((1 - torch.cos(math.pi * u)) / 2), rel=1e-12)


def test_cfg_zero_star_scale_is_the_least_squares_fit_and_zero_init_freezes_x():
    main, guide = pair()
    got = combine(CFGZeroStar(idle, idle, 2.0), main, guide, 2.0)
    for i in range(len(main)):  # s* = argmin_s |main - s guide|^2, solved by lstsq
        s = torch.linalg.lstsq(guide[i].reshape(-1, 1), main[i].reshape(-1, 1)).solution.item()
        torch.testing.assert_close(
            got[i], s * guide[i] + 2.0 * (main[i] - s * guide[i]), rtol=1e-9, atol=1e-9
        )
    x = torch.randn(5, 2, dtype=torch.float64, generator=gen(3))
    frozen = CFGZeroStar(lambda x, s, c: 0 * x, lambda x, s, c: 0 * x + 1, 3.0, zero_init_sigma=5.0)
    sigma = torch.tensor([80.0, 5.0, 4.9, 1.0, 0.1], dtype=torch.float64)
    out = frozen(x, sigma)
    assert torch.equal(out[:2], x[:2]) and not torch.equal(out[2:], x[2:])


def test_icg_guide_is_the_model_at_random_classes(tree):
    x, sigma, labels = points(tree, n=32)
    icg = RandomConditioned(tree, tree.num_classes, seed=7)
    drawn = torch.randint(0, tree.num_classes, (32,), generator=gen(7))
    torch.testing.assert_close(icg(x, sigma, labels), tree(x, sigma, drawn), rtol=0, atol=0)


def test_cfgpp_at_w_0_is_the_plain_sampler_on_the_guide_and_refuses_other_samplers(tree):
    x = torch.randn(50, 2, dtype=torch.float64, generator=gen(2)) * 10
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.3, 0.05, 0.0], dtype=torch.float64)
    guide = NullConditioned(tree, tree.num_classes)
    labels = torch.zeros(50, dtype=torch.long)
    pp = sample_euler_cfgpp(CFGPlusPlus(tree, guide, 0.0), x, sigmas, cond=labels)
    plain = sample_euler(guide, x, sigmas, cond=labels)
    torch.testing.assert_close(pp, plain, rtol=1e-10, atol=1e-10)
    # w = 1 renoises with the guide's noise: a different method than the plain conditional sampler
    assert not torch.allclose(sample_euler_cfgpp(CFGPlusPlus(tree, guide, 1.0), x, sigmas, cond=labels),
                              sample_euler(tree, x, sigmas, cond=labels))  # fmt: skip
    check_sampler("euler")
    with pytest.raises(ConfigError, match="not for sampler 'heun'; use --sampler euler"):
        check_sampler("heun")


# ------------------------------------------------------------------ parity with diffusers' guiders


def test_apg_equals_diffusers_original_formulation_with_threshold_and_momentum():
    from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

    params = apg_from_diffusers(guidance_scale=4.0, eta=0.3, rescale=2.5, momentum=-0.5)
    ours = APG(idle, idle, params["w"], eta=0.3, norm_threshold=2.5, momentum=-0.5)
    buffer = MomentumBuffer(-0.5)
    for step, s in enumerate([10.0, 5.0, 2.0, 1.0]):  # one evaluation per level: the buffers agree
        main, guide = pair(seed=10 * step)
        expected = normalized_guidance(main, guide, 4.0, buffer, eta=0.3, norm_threshold=2.5,
                                       use_original_formulation=True)  # fmt: skip
        got = combine(ours, main, guide, params["w"], torch.full((8,), s))
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_apg_momentum_is_per_noise_level_under_heun_and_resets_when_sigma_rises():
    apg = APG(idle, idle, 2.0, momentum=0.5)
    d = [torch.full((1, 3), float(v), dtype=torch.float64) for v in (1, 2, 3, 4, 5)]
    zero = torch.zeros(1, 3, dtype=torch.float64)

    def running(diff, s):
        return apg._average(diff, torch.tensor([s]))

    assert torch.equal(running(d[0], 10.0), d[0])
    assert torch.equal(running(d[1], 5.0), d[1] + 0.5 * d[0])  # new level
    assert torch.equal(running(d[2], 5.0), d[2] + 0.5 * d[0])  # same level again: replaces, same past
    assert torch.equal(running(d[3], 2.0), d[3] + 0.5 * (d[2] + 0.5 * d[0]))
    assert torch.equal(running(d[4], 80.0), d[4] + 0.5 * zero)  # a new trajectory


def test_cfg_zero_star_equals_diffusers():
    main, guide = pair(dtype=torch.float32)
    guider = guiders.ClassifierFreeZeroStarGuidance(guidance_scale=3.0, zero_init_steps=0)
    guider.set_state(step=1, num_inference_steps=10, timestep=torch.tensor(500))
    expected = guider.forward(main, guide).pred
    torch.testing.assert_close(
        combine(CFGZeroStar(idle, idle, 3.0), main, guide, 3.0), expected, rtol=1e-5, atol=1e-5
    )


def test_tcfg_equals_diffusers():
    from diffusers.guiders.tangential_classifier_free_guidance import normalized_guidance

    main, guide = pair(dtype=torch.float32)
    expected = normalized_guidance(main, guide, 3.0, False)
    torch.testing.assert_close(
        combine(TCFG(idle, idle, 3.0), main, guide, 3.0), expected, rtol=1e-4, atol=1e-4
    )


def test_mambo_g_equals_diffusers():
    from diffusers.guiders.magnitude_aware_guidance import mambo_guidance

    main, guide = pair(shape=(4, 36))  # diffusers' torch.norm over 3 dims fails on [N, C, H, W] (torch 2.13)
    expected = mambo_guidance(main, guide, 5.0, alpha=2.0, use_original_formulation=False)
    got = combine(MamboG(idle, idle, 5.0, alpha=2.0), main, guide, 5.0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_dynamic_thresholding_equals_diffusers_ddpm_scheduler():
    from diffusers import DDPMScheduler

    x0 = 1.6 * torch.randn(6, 3, 8, 8, generator=gen(4))
    sched = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    expected = sched._threshold_sample(x0.clone())
    got = DynamicThresholding(lambda x, s, c: x0, percentile=0.9, max_value=1.5)(x0, torch.ones(6))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ bad parameters


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: APG(idle, idle, 2.0, eta=math.nan), "APG eta must be a finite number, got nan"),
        (
            lambda: APG(idle, idle, 2.0, momentum=2.0),
            "APG momentum must be a finite number in [-1.0, 1.0], got 2.0",
        ),
        (lambda: APG(idle, idle, math.inf), "guidance weight w must be finite (1 = no guidance), got inf"),
        (lambda: MamboG(idle, idle, 2.0, alpha=-1), "MAMBO-G alpha must be a finite number >= 0.0, got -1.0"),
        (lambda: APG(idle, idle, 2.0, space="v"), "unknown guidance space 'v'"),
        (lambda: WeightSchedule("linear", 0.0, 10.0), "the linear schedule runs over log sigma"),
        (lambda: WeightSchedule("cosin"), "did you mean 'cosine'"),
        (lambda: WeightSchedule("step", 2.0, 1.0), "needs sigma_lo < sigma_hi, got 2.0 and 1.0"),
        (
            lambda: DynamicThresholding(idle, percentile=1.5),
            "percentile must be a finite number in [0.0, 1.0]",
        ),
        (lambda: RandomConditioned(idle, 1), "needs >= 2 classes, got 1"),
    ],
)
def test_bad_parameters_name_the_value(make, words):
    with pytest.raises(ConfigError) as info:
        make()
    assert words in str(info.value)
