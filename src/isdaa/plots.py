"""Figures from saved results (never imports the trainer): golden win rate vs sqrt(KL) with the fitted
Gao et al. curves (the paper's Figures 3-4), points coloured by method and shaded by beta.

Input points are dicts with method, beta, sqrt_kl, win_rate, win_rate_se, win_rate_minus_ref (what
`load_eval_points` reads from RUN/eval/table.csv and RUN/config.yaml); the x axis is the sqrt of the
KL estimator recorded in the table (`sqrt_kl_estimator`, k1 by default) and is written on the axis.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from isdaa.registry import METHODS

# One colour per method in every figure of the project, from the registry's order (`Method.order`): the
# base method at order k takes colour 2k of PALETTE and its IS variant colour 2k + 1 (tab10, then tab20's
# light shades), so DPO / IS-DPO are blue / orange and IPO / IS-IPO green / red; online DPO, the on-policy
# reference line, is black.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")
METHOD_COLORS = {name: PALETTE[(2 * m.order + m.importance_weighted) % len(PALETTE)] for name, m in METHODS.items()}
METHOD_COLORS["online-dpo"] = "#000000"
_EXTRA_COLORS = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#5254a3", "#8ca252", "#bd9e39"]  # tab20b


def method_colors(labels) -> dict:
    """Label -> colour: the fixed METHOD_COLORS for known method names, then a fixed list for other
    labels (e.g. `is-dpo[self-norm]`) in sorted order, so the same run set is coloured the same way."""
    out, extra = {}, iter(_EXTRA_COLORS * 4)
    for lab in sorted(set(labels)):
        out[lab] = METHOD_COLORS.get(lab) or next(extra)
    return out


def _find_key(cfg, names):
    """First value of a key in `names` anywhere in a nested dict (config layouts differ)."""
    if isinstance(cfg, dict):
        for n in names:
            if n in cfg and not isinstance(cfg[n], dict):
                return cfg[n]
        for v in cfg.values():
            found = _find_key(v, names)
            if found is not None:
                return found
    return None


def _float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def load_eval_points(run_dirs: Sequence[str | Path], method: str | None = None,
                     beta: float | None = None) -> list[dict]:
    """One point per evaluated checkpoint of each run (RUN/eval/table.csv); method and beta from
    RUN/config.yaml (keys `method`/`loss_type` and `beta`, anywhere in it) unless given."""
    points = []
    for run in map(Path, run_dirs):
        cfg = {}
        if (run / "config.yaml").exists():
            import yaml

            cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        m = method or _find_key(cfg, ("method", "loss_type", "loss")) or run.name
        b = beta if beta is not None else _float(_find_key(cfg, ("beta",)))
        with open(run / "eval" / "table.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                p = {k: _float(v) if k not in ("sqrt_kl_estimator", "kl_source") else v for k, v in row.items()}
                points.append({**p, "method": str(m), "beta": b, "run": str(run)})
    return points


def _colours(points):
    """The method's colour (method_colors), lightened for smaller beta when several betas share a panel."""
    base = method_colors(p["method"] for p in points)
    betas = sorted({p["beta"] for p in points if p["beta"] is not None})
    from matplotlib.colors import to_rgb

    def colour(p):
        rgb = np.array(to_rgb(base[p["method"]]))
        if p["beta"] is None or len(betas) < 2:
            return tuple(rgb)
        light = 0.5 * (1 - betas.index(p["beta"]) / (len(betas) - 1))  # 0.5 for the smallest beta, 0 for the largest
        return tuple(rgb + (1 - rgb) * light)

    return colour


def plot_winrate_vs_sqrt_kl(
    points: Sequence[dict],
    out_path: str | Path | None = None,
    fit_form: str | None = "rl",
    title: str | None = None,
    ax=None,
):
    """Scatter win rate (+- se) vs sqrt KL, one colour per (method, beta); with `fit_form` ("rl" |
    "bon"), each group's Gao curve fitted on (sqrt KL, win rate minus the reference's), drawn as
    ref + R(d). Saves to `out_path` when given; returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from isdaa.evaluate.fits import _fit, gao_curve

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4.2))
    colour = _colours(points)
    groups = defaultdict(list)
    for p in points:
        groups[(p["method"], p["beta"])].append(p)
    for (m, b), pts in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        d = np.array([p["sqrt_kl"] for p in pts])
        w = np.array([p["win_rate"] for p in pts])
        se = np.array([p.get("win_rate_se") or 0.0 for p in pts])
        c = colour(pts[0])
        label = m if b is None else f"{m} beta={b:g}"
        ax.errorbar(d, w, yerr=se, fmt="o", color=c, ms=4, capsize=2, label=label)
        rel = [p.get("win_rate_minus_ref") for p in pts]
        if fit_form and all(r is not None for r in rel) and len(pts) >= 2:
            ref_win = float(np.mean(w - np.array(rel)))
            f = _fit(d, np.array(rel), fit_form)
            xs = np.linspace(0, max(d.max(), 1e-6) * 1.05, 100)
            ax.plot(xs, ref_win + gao_curve(xs, f["alpha"], f["beta"], fit_form), "-", color=c, lw=1.3)
    est = next((p.get("sqrt_kl_estimator") for p in points if p.get("sqrt_kl_estimator")), "k1")
    ax.set_xlabel(f"sqrt KL(pi_theta || pi_ref)  [{est} estimator]")
    ax.set_ylabel("golden win rate vs chosen")
    ax.set_title(title or "Over-optimization: win rate vs sqrt KL" + (f" (Gao {fit_form} fit)" if fit_form else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig = fig or ax.figure
    if out_path is not None:
        from isdaa.io import atomic_path

        out_path = Path(out_path)
        with atomic_path(out_path) as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight", format=out_path.suffix.lstrip(".") or "png")
        plt.close(fig)
    return fig
