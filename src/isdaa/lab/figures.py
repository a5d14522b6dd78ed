"""The lab report's figures (matplotlib, Agg), drawn from the points, summary and training rows of
`isdaa.lab.aggregate` (saved results only; never the trainer). Curves are keyed by configuration (every
column but the seed) and labelled by its display name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from isdaa.drift import centered_mean
from isdaa.lab.aggregate import (
    CONFIG_COLUMNS,
    base_method,
    by_config,
    clip_table,
    config_key,
    curves,
    display_names,
    regime_of,
    regime_rows,
    regime_title,
    short_name,
)
from isdaa.lab.presets import MAIN


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(labels):
    from isdaa.plots import method_colors

    return method_colors(labels)


def _names(rows) -> dict:
    """{config key: display name} from the rows' own `name` column."""
    return {config_key(r): r["name"] for r in rows}


def zoom_limit(rows) -> float | None:
    """The sqrt KL limit of a Figure 3 panel's zoomed copy: twice the median over configurations of their
    last checkpoint's sqrt KL (mean over seeds); None when every point already lies within 1.5x of it (one
    collapsed method at sqrt KL 12 otherwise squeezes the others' curves into the first tenth of the axis)."""
    finals = [np.mean([max(run, key=lambda r: r["step"])["sqrt_kl"] for run in runs.values()])
              for runs in by_config(rows).values()]
    if not finals:
        return None
    limit = 2 * float(np.median(finals))
    return limit if limit > 0 and max(r["sqrt_kl"] for r in rows) > 1.5 * limit else None


def fig_winrate_vs_kl(points, out: Path) -> Path | None:
    """Figure 3 analog: win rate vs sqrt KL, one panel per beta, every checkpoint of every seed, Gao
    RL-form fits (isdaa.plots.plot_winrate_vs_sqrt_kl on each panel); under a panel whose axis a few runs
    stretch far (`zoom_limit`), the same points zoomed to where most configurations end."""
    from isdaa.plots import plot_winrate_vs_sqrt_kl

    main = [r for r in points if r["group"] == MAIN]
    if not main:
        return None
    plt = pyplot()
    ref = {r["run_id"]: r["win_rate"] for r in main if r["step"] == 0}
    betas = sorted({r["beta"] for r in main})
    zooms = {b: zoom_limit([r for r in main if r["beta"] == b]) for b in betas}
    rows = 2 if any(z is not None for z in zooms.values()) else 1
    fig, axes = plt.subplots(rows, len(betas), figsize=(5.5 * len(betas), 4.4 * rows), squeeze=False)
    for col, beta in enumerate(betas):
        pts = [{"method": r["name"], "beta": None, "sqrt_kl": r["sqrt_kl"], "win_rate": r["win_rate"],
                "win_rate_se": r["win_rate_se"], "sqrt_kl_estimator": "k1, T=1 samples",
                "win_rate_minus_ref": r["win_rate"] - ref[r["run_id"]] if r["run_id"] in ref else None}
               for r in main if r["beta"] == beta]
        plot_winrate_vs_sqrt_kl(pts, ax=axes[0][col], fit_form="rl", title=f"beta = {beta:g}")
        axes[0][col].set_ylim(-0.05, 1.02)
        if rows == 2:
            ax, z = axes[1][col], zooms[beta]
            if z is None:
                ax.set_visible(False)
                continue
            plot_winrate_vs_sqrt_kl(pts, ax=ax, fit_form="rl", title=f"beta = {beta:g}, zoomed to sqrt KL <= {z:.2g}")
            inside = [p["win_rate"] for p in pts if p["sqrt_kl"] <= z]
            ax.set_xlim(-0.02 * z, z)
            ax.set_ylim(min(inside) - 0.03, max(inside) + 0.03)
    for ax in fig.axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    _legend_right(fig)
    return save(fig, out / "fig3_winrate_vs_sqrtkl.png")


def fig_dynamics(points, out: Path) -> Path | None:
    """Figure 4 analog: win rate and sqrt KL vs fraction of training, mean +- se over seeds."""
    main = [r for r in points if r["group"] == MAIN]
    if not main:
        return None
    plt = pyplot()
    betas = sorted({r["beta"] for r in main})
    names = _names(main)
    style = _styles(names)
    fig, axes = plt.subplots(2, len(betas), figsize=(4.2 * len(betas) + 2.2, 6.0), squeeze=False, sharex=True)
    for row, field, ylabel in ((0, "win_rate", "golden win rate"), (1, "sqrt_kl", "sqrt KL (k1)")):
        cur = curves(main, field)
        for col, beta in enumerate(betas):
            ax = axes[row][col]
            for k, (fr, mean, se, _n) in sorted(cur.items(), key=lambda kv: names[kv[0]]):
                if k[2] != beta:
                    continue
                ax.plot(fr, mean, color=style[k][0], ls=style[k][1], label=names[k], lw=1.4, marker=".", ms=4)
                ax.fill_between(fr, mean - se, mean + se, color=style[k][0], alpha=0.2)
            ax.set_ylabel(ylabel) if col == 0 else None
            ax.set_title(f"beta = {beta:g}") if row == 0 else ax.set_xlabel("fraction of training")
            ax.grid(alpha=0.3)
    _legend_right(fig, axes[0][-1])
    return save(fig, out / "fig4_dynamics.png")


def fig_clip(summary, out: Path) -> Path | None:
    """Figure 5 analog: final win rate and KL vs the clip eps."""
    clip = clip_table(summary)
    if len(clip) < 2:
        return None
    plt = pyplot()
    eps = [e for e, _ in clip]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.3))
    axes[0].errorbar(eps, [s["final_win_rate"] for _, s in clip], yerr=[_se0(s["final_win_rate_se"]) for _, s in clip],
                     marker="o", capsize=3)
    axes[0].set_ylabel("final golden win rate\n(mean of last 2 checkpoints)")
    axes[1].plot(eps, [s["final_kl"] for _, s in clip], marker="o")
    axes[1].set_ylabel("final KL (k1)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(eps, [f"{e:g}" for e in eps])
        ax.set_xlabel("clip eps (log w <= 2 eps)")
        ax.grid(alpha=0.3)
    return save(fig, out / "fig5_clip.png")


def fig_importance(points, train_rows, out: Path) -> Path | None:
    """Figure 6 analog: importance ratios of the training pairs under each checkpoint (all methods), and
    the weights the IS methods actually used, step by step (the trainer's is/weight_mean, is/ess)."""
    main = [r for r in points if r["group"] == MAIN and r["log_ratio_mean"] is not None]
    if not main:
        return None
    plt = pyplot()
    names = _names(main)
    short = {config_key(r): short_name(r) for r in main}
    colors = _colors(set(short.values()))
    styles = {b: ls for b, ls in zip(sorted({r["beta"] for r in main}), ("-", "--", ":", "-."))}
    panels = (("ratio_mean_log", "checkpoints: log mean ratio pi_theta/pi_b\n(training pairs, unclipped)"),
              ("weight_mean", "checkpoints: mean clipped weight"), ("ess", "checkpoints: ESS of clipped weights"))
    fig, grid = plt.subplots(2, 3, figsize=(14, 7))
    axes, legend_ax = list(grid.flat[:5]), grid.flat[5]
    for ax, (field, title) in zip(axes, panels):
        for k, (fr, mean, se, _n) in sorted(curves(main, field).items(), key=lambda kv: names[kv[0]]):
            ax.plot(fr, mean, color=colors[short[k]], ls=styles.get(k[2], "-"), label=f"{names[k]} b={k[2]:g}", lw=1.3)
        ax.set_title(title, fontsize=9)
    train = [r for r in train_rows if r["group"] == MAIN and base_method(r["method"]) is not None
             and r.get("is/weight_mean") is not None]
    for ax, field in zip(axes[3:], ("is/weight_mean", "is/ess")):
        for k, (fr, mean, se, _n) in sorted(curves(train, field).items()):
            name = names.get(k, k[1])
            ax.plot(fr, mean, color=colors.get(short.get(k), "k"), ls=styles.get(k[2], "-"), lw=1.0,
                    label=f"{name} b={k[2]:g}")
        ax.set_title(f"training batches: {field} (IS methods)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("fraction of training")
        ax.grid(alpha=0.3)
    for ax in (axes[1], axes[3]):
        ax.set_yscale("log")
        _plain_log_ticks(ax)
    legend_ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    legend_ax.legend(handles, labels, loc="center", fontsize=7, ncol=2 if len(labels) > 12 else 1,
                     title="line style = beta", title_fontsize=8)
    return save(fig, out / "fig6_importance.png")


def fig_components(points, out: Path, comps: list[str]) -> Path | None:
    """The golden reward's components (the task's, as point columns) over training: HOW a policy
    over-optimizes."""
    main = [r for r in points if r["group"] == MAIN and comps and r.get(comps[0]) is not None]
    if not main:
        return None
    plt = pyplot()
    betas = sorted({r["beta"] for r in main})
    names = _names(main)
    style = _styles(names)
    fig, axes = plt.subplots(len(betas), len(comps), figsize=(3.0 * len(comps) + 2.2, 2.6 * len(betas) + 0.4),
                             squeeze=False, sharex=True)
    for c, comp in enumerate(comps):
        cur = curves(main, comp)
        for b, beta in enumerate(betas):
            ax = axes[b][c]
            for k, (fr, mean, se, _n) in sorted(cur.items(), key=lambda kv: names[kv[0]]):
                if k[2] == beta:
                    ax.plot(fr, mean, color=style[k][0], ls=style[k][1], label=names[k], lw=1.3)
            ax.set_title(f"{comp} (beta {beta:g})", fontsize=8)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("fraction of training")
    _legend_right(fig, axes[0][-1])
    return save(fig, out / "fig_components.png")


def fig_regimes(summary, out: Path) -> Path | None:
    """Final win rate and sqrt KL vs the learning rate, one panel column per (optimizer, beta); one line
    per configuration but the learning rate, e.g. `dpo (114 steps)` (mean +- se over seeds)."""
    reg = regime_rows(summary)
    if not reg:
        return None
    plt = pyplot()
    cols = sorted({(s["optimizer"], s["beta"]) for s in reg})
    names = display_names(reg, omit=("lr", "optimizer"))
    lines: dict = {}
    for s in reg:
        lines.setdefault((s["optimizer"], s["beta"], names[config_key(s)]), []).append(s)
    short = {n: short_name(rs[0]) for (_o, _b, n), rs in lines.items()}
    colors = _colors(set(short.values()))
    dash = {n: ("-", "--", ":", "-.")[sorted(m for m in short if short[m] == short[n]).index(n) % 4] for n in short}
    fig, axes = plt.subplots(2, len(cols), figsize=(4.2 * len(cols) + 2.5, 6), squeeze=False, sharex="col")
    for (opt, beta, name), rs in sorted(lines.items()):
        c = cols.index((opt, beta))
        rs.sort(key=lambda s: s["lr"])
        lrs = [s["lr"] for s in rs]
        axes[0][c].errorbar(lrs, [s["final_win_rate"] for s in rs], yerr=[_se0(s["final_win_rate_se"]) for s in rs],
                            color=colors[short[name]], ls=dash[name], marker="o", capsize=2, label=name)
        axes[1][c].plot(lrs, [s["final_sqrt_kl"] for s in rs], color=colors[short[name]], ls=dash[name], marker="o")
    for c, (opt, beta) in enumerate(cols):
        axes[0][c].set_title(f"{opt}, beta {beta:g}")
        for r in range(2):
            axes[r][c].set_xscale("log")
            axes[r][c].grid(alpha=0.3)
        axes[1][c].set_xlabel("learning rate")
    axes[0][0].set_ylabel("final golden win rate\n(mean of last 2 checkpoints)")
    axes[1][0].set_ylabel("final sqrt KL")
    _legend_right(fig)
    return save(fig, out / "fig_regimes.png")


MECH_PANELS = (("is/ess", "ESS of the batch weights", "linear"), ("is/weight_max", "max weight w_max", "log"),
               ("is/clip_frac", "fraction of pairs at the clip", "linear"),
               ("is/top_share", "top pair's share of the batch weight", "linear"))


def fig_mechanism(points, train_rows, out: Path) -> list[tuple[str, Path]]:
    """One figure per regime (optimizer, lr, schedule, data, steps) of every group with a logged IS run: the
    golden win rate over optimizer steps (mean +- se over seeds) next to the IS methods' per-step ESS, w_max,
    clipped fraction and top-pair share (rows: beta). Panels of metrics no run logged are left out.
    Returns [(regime title, path)]."""
    by_regime: dict = {}
    for r in points:
        by_regime.setdefault((r["group"], regime_of(r)), []).append(r)
    out_paths = []
    plt = pyplot()
    for old in out.glob("fig_mechanism_*.png"):  # a previous report's, whose regimes may differ
        old.unlink()
    for (group, regime), pts in sorted(by_regime.items(), key=lambda kv: str(kv[0])):
        tr = [r for r in train_rows
              if r["group"] == group and regime_of(r) == regime and base_method(r["method"]) is not None]
        if not tr:  # no IS run logged in this regime: Figure 4 has its win rates
            continue
        panels = [p for p in MECH_PANELS if any(r.get(p[0]) is not None for r in tr)]
        betas = sorted({r["beta"] for r in pts})
        short = {config_key(r): short_name(r) for r in pts}
        colors = _colors(short.values())
        fig, axes = plt.subplots(len(betas), 1 + len(panels),
                                 figsize=(3.6 * (1 + len(panels)) + 2.0, 2.8 * len(betas) + 0.6),
                                 squeeze=False, sharex=True)
        wr = curves(pts, "win_rate", x="step")
        mech = {f: _rolling(curves(tr, f, x="step")) for f, _, _ in panels}
        for b, beta in enumerate(betas):
            ax = axes[b][0]
            for k, (x, mean, se, _n) in sorted(wr.items(), key=lambda kv: short[kv[0]]):
                if k[2] == beta:
                    ax.plot(x, mean, color=colors[short[k]], label=short[k], lw=1.4, marker=".", ms=4)
                    ax.fill_between(x, mean - se, mean + se, color=colors[short[k]], alpha=0.2)
            ax.set_title(f"golden win rate (beta {beta:g})", fontsize=9)
            for c, (field, title, scale) in enumerate(panels, start=1):
                ax = axes[b][c]
                for k, (x, mean) in sorted(mech[field].items()):
                    if k[2] == beta:
                        ax.plot(x, mean, color=colors.get(short.get(k), "k"), lw=1.0)
                ax.set_yscale(scale)
                if scale == "linear":
                    ax.set_ylim(bottom=0)
                else:
                    _plain_log_ticks(ax)
                ax.set_title(f"{title} (beta {beta:g})", fontsize=9)
        for ax in axes.flat:
            ax.grid(alpha=0.3)
        for ax in axes[-1]:
            ax.set_xlabel("optimizer step")
        title = f"{group}: {regime_title(pts[0])}"
        fig.suptitle(title, fontsize=10)
        _legend_right(fig, axes[0][0])
        out_paths.append((title, save(fig, out / f"fig_mechanism_{len(out_paths):02d}.png")))
    return out_paths


CONTROL_PANELS = (("update_norm", "optimizer step norm ||dtheta||", "log"),
                  ("is/weight_mean", "mean batch weight", "log"),
                  ("is/ess", "ESS of the batch weights", "linear"))


def fig_controls(points, train_rows, controls: list[dict], out: Path) -> list[Path]:
    """One figure per beta of the IS-weight controls: the golden win rate over optimizer steps (mean +- se
    over seeds) and the per-step update norm, mean batch weight and ESS (rolling mean over 2% of the steps)
    of DPO, IS-DPO and each control (`aggregate.control_comparisons`)."""
    for old in out.glob("fig_controls_*.png"):
        old.unlink()
    by_beta: dict = {}
    for c in controls:
        rows = [c["base_row"], c["is_row"], c["control"]]
        by_beta.setdefault(c["control"]["beta"], {}).update({config_key(r): r for r in rows if r is not None})
    paths = []
    plt = pyplot()
    for beta, rows in sorted(by_beta.items()):
        keys = set(rows)
        pts = [r for r in points if config_key(r) in keys]
        tr = [r for r in train_rows if config_key(r) in keys]
        panels = [p for p in CONTROL_PANELS if any(r.get(p[0]) is not None for r in tr)]
        names = {k: r["name"] if r["group"] == MAIN else short_name(r) for k, r in rows.items()}
        colors = _colors(set(names.values()))
        fig, axes = plt.subplots(1, 1 + len(panels), figsize=(3.8 * (1 + len(panels)) + 2.0, 3.4), squeeze=False)
        ax = axes[0][0]
        for k, (x, mean, se, _n) in sorted(curves(pts, "win_rate", x="step").items(), key=lambda kv: names[kv[0]]):
            ax.plot(x, mean, color=colors[names[k]], label=names[k], lw=1.4, marker=".", ms=4)
            ax.fill_between(x, mean - se, mean + se, color=colors[names[k]], alpha=0.2)
        ax.set_title(f"golden win rate (beta {beta:g})", fontsize=9)
        for c, (field, title, scale) in enumerate(panels, start=1):
            ax = axes[0][c]
            positive = False
            for k, (x, mean) in sorted(_rolling(curves(tr, field, x="step")).items(), key=lambda kv: names[kv[0]]):
                ax.plot(x, mean, color=colors[names[k]], lw=1.0)
                positive |= bool(np.any(mean > 0))
            if scale == "log" and positive:  # a warmup step of lr 0 has update norm 0: drawn off the log axis
                ax.set_yscale(scale)
                _plain_log_ticks(ax)
            ax.set_title(title, fontsize=9)
        for ax in axes.flat:
            ax.grid(alpha=0.3)
            ax.set_xlabel("optimizer step")
        _legend_right(fig)
        paths.append(save(fig, out / f"fig_controls_b{beta:g}.png"))
    return paths


def _rolling(cur: dict, window_frac: float = 0.02) -> dict:
    """{key: (steps, mean over seeds then a centred rolling mean over ~2% of the steps)}: per-step
    weights are noisy; the figure shows their trend (the CSV has every step)."""
    out = {}
    for k, (x, mean, _se, _n) in cur.items():
        h = int(round(window_frac * len(x))) // 2
        out[k] = (x, np.asarray(centered_mean([float(v) for v in mean], 2 * h + 1)))
    return out


def _plain_log_ticks(ax) -> None:
    """Log axis tick labels as plain numbers (0.9, 2, 10), not 9x10^-1; minor ticks labelled only when
    the axis spans less than a decade. Call after plotting."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fmt = FuncFormatter(lambda v, _pos: f"{v:.3g}")
    lo, hi = ax.get_ylim()
    ax.yaxis.set_major_formatter(fmt)
    # not hi / lo < 10: the lower limit can be ~1e-308 (a weight of 0 on a log axis), and hi / lo overflows
    ax.yaxis.set_minor_formatter(fmt if 0 < lo and hi < 10 * lo else NullFormatter())


def _se0(se: float) -> float:
    """An error bar of 0 where the se is undefined (one seed)."""
    return 0.0 if se is None or se != se else se


def _legend_right(fig, _ax=None) -> None:
    """One legend for the figure (every labelled line of every panel, once), outside the panels on the
    right (never over the curves)."""
    seen: dict = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if seen:
        labels = sorted(seen)
        fig.legend([seen[lab] for lab in labels], labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                   frameon=False, ncol=2 if len(labels) > 16 else 1)


def _styles(names: dict) -> dict:
    """{config key: (colour, linestyle)}: the colour of the method and its options (isdaa.plots' fixed
    colours: dpo blue, is-dpo orange, ...), a line style per configuration of the same method that
    differs in another column (lr, steps, ...)."""
    shorts = {k: short_name(dict(zip(CONFIG_COLUMNS, k))) for k in names}
    colors = _colors(set(shorts.values()))
    variants = {sh: sorted({names[k] for k in names if shorts[k] == sh}) for sh in set(shorts.values())}
    return {k: (colors[shorts[k]], ("-", "--", ":", "-.")[variants[shorts[k]].index(names[k]) % 4]) for k in names}


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path
