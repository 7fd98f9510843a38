"""`diffguide likelihood RUN`: negative log-likelihood through the probability-flow ODE."""

from __future__ import annotations

from diffguide.cli.common import add_device_arg, add_threads_arg, check_json_output, device_of, write_json
from diffguide.cli.progress import add_progress_flag, likelihood_callback, progress_bar
from diffguide.errors import ConfigError

# keys of every likelihood JSON, to recognise one written before `written_by` was recorded
LIKELIHOOD_KEYS = ("n", "data", "dim", "sigma_min", "sigma_max", "nats_per_dim", "nfe")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "likelihood",
        help="NLL (nats/dim, bits/dim for images) of fresh data by the probability-flow ODE",
        description="Negative log-likelihood by the probability-flow ODE (Song et al. 2021, appendix D), "
        "integrated from sigma_min to sigma_max with an adaptive solver. See diffguide.metrics.likelihood.",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--n", type=int, default=1000, help="number of data points (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data draws and probes")
    p.add_argument("--batch-size", type=int, default=1000, help="points per ODE solve")
    p.add_argument("--checkpoint", help="checkpoint file (default: latest good)")
    p.add_argument("--raw", action="store_true", help="use raw weights instead of the EMA")
    p.add_argument("--rtol", type=float, default=1e-5, help="solver relative tolerance (default 1e-5)")
    p.add_argument("--atol", type=float, default=1e-5, help="solver absolute tolerance (default 1e-5)")
    p.add_argument("--method", default="RK45", help="scipy solve_ivp method (default RK45)")
    p.add_argument(
        "--divergence",
        default="auto",
        choices=["auto", "exact", "hutchinson"],
        help="exact (autograd per dimension) or Hutchinson; auto: exact up to 16 dims",
    )
    p.add_argument(
        "--probe", default="rademacher", choices=["rademacher", "gaussian"], help="Hutchinson probe"
    )
    p.add_argument("--sigma-min", type=float, help="lower end of the integral (default: the process's)")
    p.add_argument("--sigma-max", type=float, help="upper end of the integral (default: the process's)")
    p.add_argument("--conditional", action="store_true", help="log p(x | label) with the data's labels")
    p.add_argument("--out", help="also write the results as JSON to this file (.json)")
    p.add_argument(
        "--force", action="store_true", help="replace an existing --out that `likelihood` did not write"
    )
    add_progress_flag(p)
    add_device_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=cmd_likelihood)


def cmd_likelihood(args) -> int:
    from diffguide.metrics.likelihood import check_solver_options, run_likelihood
    from diffguide.models.runs import load_run

    for name in ("n", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    check_solver_options(args.rtol, args.atol, args.method, args.sigma_min, args.sigma_max)
    device = device_of(args)
    out = None
    if args.out is not None:  # checked before the model is even loaded
        out = check_json_output(
            args.out, "likelihood", force=args.force, example="likelihood.json", legacy_keys=LIKELIHOOD_KEYS
        )
    run = load_run(args.run, args.checkpoint, use_ema=not args.raw, device=device)
    with progress_bar(args.n, "likelihood", "points", enabled=not args.no_progress) as bar:
        result = run_likelihood(
            run, args.n, seed=args.seed, batch_size=args.batch_size, conditional=args.conditional,
            sigma_min=args.sigma_min, sigma_max=args.sigma_max, rtol=args.rtol, atol=args.atol,
            method=args.method, divergence=args.divergence, probe=args.probe,
            callback=likelihood_callback(bar),
        )  # fmt: skip
    print(
        f"{run.config.name}: NLL {result['nats_per_dim']:.4f} +- {result['nats_per_dim_stderr']:.4f} nats/dim"
        f" on {result['n']} points, {result['data']} (sigma {result['sigma_min']:.4g} .. {result['sigma_max']:.4g},"
        f" {result['nfe']} ODE evaluations)"
    )
    if "bits_per_dim" in result:
        print(f"  {result['bits_per_dim']:.4f} bits/dim (8-bit data, uniform dequantisation)")
    if "exact_nats_per_dim" in result:
        print(
            f"  exact NLL of the same points under the true mixture: {result['exact_nats_per_dim']:.4f} nats/dim"
            f" ({result['exact_nats_per_dim_at_sigma_min']:.4f} blurred by sigma_min)"
        )
    if out is not None:
        write_json(out, result, written_by="diffguide likelihood")
        print(f"wrote {out}")
    return 0
