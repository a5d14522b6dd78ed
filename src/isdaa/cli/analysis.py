"""`isdaa bandit` (Section 3.2 / Figure 2) and `isdaa toy` (Figure 1): thin wrappers over isdaa.analysis."""

from __future__ import annotations

from pathlib import Path

import click


def _clip_option(value):
    """--clip: a float eps (weights <= e^(2 eps)) or 'none' for unclipped weights."""
    if value is None or str(value).lower() == "none":
        return None
    eps = float(value)
    if eps <= 0:
        raise click.BadParameter(f"clip eps must be > 0 (or 'none'), got {value}")
    return eps


def _single_threaded(fn, *args, **kwargs):
    """Run fn with one intra-op thread (tiny 2-D/4-arm tensors: threads only add overhead), then restore."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/bandit", show_default=True,
              help="Folder for bandit.csv and bandit.png.")
@click.option("--clip", default="none", show_default=True,
              help="IS clip eps (weights <= e^(2 eps)); 'none' for the exact Theorem-1 check.")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Monte-Carlo estimate with N sampled pairs instead of exact expectations.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Monte-Carlo pairs.")
@click.option("--num-betas", type=click.IntRange(min=2), default=20, show_default=True,
              help="Grid size over beta in [0.05, 1.0].")
def bandit(out_dir, clip, samples, seed, num_betas):
    """Figure 2: cos(grad KL, grad mu) and cos(grad KL, grad mu_IS) on the 4-arm bandit, against beta."""
    from isdaa.analysis.bandit import COLUMNS, default_betas, format_table, plot_bandit, run_bandit
    from isdaa.io import atomic_write_csv

    betas = default_betas(num_betas)
    rows = _single_threaded(run_bandit, betas, clip=_clip_option(clip), samples=samples, seed=seed)
    out = Path(out_dir)
    atomic_write_csv(out / "bandit.csv", rows, fieldnames=list(COLUMNS))
    plot_bandit(rows, out / "bandit.png")
    click.echo(format_table(rows))
    click.echo(f"wrote {out / 'bandit.csv'} and {out / 'bandit.png'}")


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/toy", show_default=True,
              help="Folder for toy.png and toy.json.")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True,
              help="Adam steps per setting.")
@click.option("--pairs", type=click.IntRange(min=1), default=256, show_default=True, help="Pairs per step.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--clip", default="1.0", show_default=True,
              help="IS clip eps (weights <= e^(2 eps)); 'none' for unclipped (high variance here).")
@click.option("--init-mean", type=(float, float), default=(1.0, 2.0), show_default=True,
              help="Initial mean of pi_theta (away from pi_ref's modes at (+-2, 0)).")
@click.option("--init-std", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="Initial isotropic std of pi_theta (pi_ref's modes have std 0.6).")
def toy(out_dir, steps, pairs, seed, clip, init_mean, init_std):
    """Figure 1: minimize 1/2 rho^2 with on-policy, off-policy and IS-weighted samples; print final KLs."""
    from isdaa.analysis.toy import ToyConfig, plot_toy, run_toy
    from isdaa.io import atomic_write_json

    cfg = ToyConfig(steps=steps, pairs=pairs, seed=seed, clip=_clip_option(clip),
                    init_mean=tuple(init_mean), init_std=init_std)
    results = _single_threaded(run_toy, cfg)
    out = Path(out_dir)
    plot_toy(results, cfg, out / "toy.png")
    atomic_write_json(out / "toy.json", {"config": {k: v for k, v in vars(cfg).items()}, "results": results})
    click.echo(f"{'setting':>12}  KL(pi_theta || pi_ref)  (Monte Carlo, {cfg.kl_samples} samples)")
    for res in results:
        click.echo(f"{res['setting']:>12}  {res['kl']:.4f}")
    click.echo(f"wrote {out / 'toy.png'} and {out / 'toy.json'}")
