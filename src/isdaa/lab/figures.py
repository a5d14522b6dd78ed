"""The lab report's figures (matplotlib, Agg), drawn from the points and summary rows of
`isdaa.lab.report` (saved results only; never the trainer)."""

from __future__ import annotations

from pathlib import Path

from isdaa.lab.report import _clip_table, _regime_rows, curves


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(labels):
    from isdaa.plots import method_colors

    return method_colors(labels)


def fig_winrate_vs_kl(points, out: Path) -> Path | None:
    """Figure 3 analog: win rate vs sqrt KL, one panel per beta, every checkpoint of every seed, Gao
    RL-form fits (isdaa.plots.plot_winrate_vs_sqrt_kl on each panel)."""
    from isdaa.plots import plot_winrate_vs_sqrt_kl

    main = [r for r in points if r["group"] == "main"]
    if not main:
        return None
    plt = _plt()
    ref = {r["run_id"]: r["win_rate"] for r in main if r["step"] == 0}
    betas = sorted({r["beta"] for r in main})
    fig, axes = plt.subplots(1, len(betas), figsize=(5.5 * len(betas), 4.4), squeeze=False, sharey=True)
    for ax, beta in zip(axes[0], betas):
        pts = [{"method": r["label"], "beta": None, "sqrt_kl": r["sqrt_kl"], "win_rate": r["win_rate"],
                "win_rate_se": r["win_rate_se"], "sqrt_kl_estimator": "k1, T=1 samples",
                "win_rate_minus_ref": r["win_rate"] - ref[r["run_id"]] if r["run_id"] in ref else None}
               for r in main if r["beta"] == beta]
        plot_winrate_vs_sqrt_kl(pts, ax=ax, fit_form="rl", title=f"beta = {beta:g}")
    return _save(fig, out / "fig3_winrate_vs_sqrtkl.png")


def fig_dynamics(points, out: Path) -> Path | None:
    """Figure 4 analog: win rate and sqrt KL vs fraction of training, mean +- se over seeds."""
    main = [r for r in points if r["group"] == "main"]
    if not main:
        return None
    plt = _plt()
    betas = sorted({r["beta"] for r in main})
    colors = _colors({r["label"] for r in main})
    fig, axes = plt.subplots(2, len(betas), figsize=(4.2 * len(betas), 6.0), squeeze=False, sharex=True)
    for row, field, ylabel in ((0, "win_rate", "golden win rate"), (1, "sqrt_kl", "sqrt KL (k1)")):
        cur = curves(main, field)
        for col, beta in enumerate(betas):
            ax = axes[row][col]
            for k, (fr, mean, se, _n) in sorted(cur.items()):
                if k[2] != beta:
                    continue
                ax.plot(fr, mean, color=colors[k[1]], label=k[1], lw=1.4, marker=".", ms=4)
                ax.fill_between(fr, mean - se, mean + se, color=colors[k[1]], alpha=0.2)
            ax.set_ylabel(ylabel) if col == 0 else None
            ax.set_title(f"beta = {beta:g}") if row == 0 else ax.set_xlabel("fraction of training (2 epochs)")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    return _save(fig, out / "fig4_dynamics.png")


def fig_clip(summary, out: Path) -> Path | None:
    """Figure 5 analog: final win rate and KL vs the clip eps."""
    clip = _clip_table(summary)
    if len(clip) < 2:
        return None
    plt = _plt()
    eps = [e for e, _ in clip]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.3))
    axes[0].errorbar(eps, [s["final_win_rate"] for _, s in clip], yerr=[s["final_win_rate_se"] for _, s in clip],
                     marker="o", capsize=3)
    axes[0].set_ylabel("final golden win rate")
    axes[1].plot(eps, [s["final_kl"] for _, s in clip], marker="o")
    axes[1].set_ylabel("final KL (k1)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clip eps (log w <= 2 eps)")
        ax.grid(alpha=0.3)
    return _save(fig, out / "fig5_clip.png")


def fig_importance(points, train_rows, out: Path) -> Path | None:
    """Figure 6 analog: importance ratios of the training pairs under each checkpoint (all methods), and
    the weights the IS methods actually used, step by step (the trainer's is/weight_mean, is/ess)."""
    main = [r for r in points if r["group"] == "main" and r["log_ratio_mean"] is not None]
    if not main:
        return None
    plt = _plt()
    colors = _colors({r["label"] for r in main})
    styles = {b: ls for b, ls in zip(sorted({r["beta"] for r in main}), ("-", "--", ":", "-."))}
    panels = (("ratio_mean_log", "checkpoints: log mean ratio pi_theta/pi_b\n(training pairs, unclipped)"),
              ("weight_mean", "checkpoints: mean clipped weight"), ("ess", "checkpoints: ESS of clipped weights"))
    fig, grid = plt.subplots(2, 3, figsize=(14, 7))
    axes, legend_ax = list(grid.flat[:5]), grid.flat[5]
    for ax, (field, title) in zip(axes, panels):
        for k, (fr, mean, se, _n) in sorted(curves(main, field).items()):
            ax.plot(fr, mean, color=colors[k[1]], ls=styles.get(k[2], "-"), label=f"{k[1]} b={k[2]:g}", lw=1.3)
        ax.set_title(title, fontsize=9)
    train = [r for r in train_rows if r["group"] == "main" and r["label"].startswith("is-")
             and r.get("is/weight_mean") is not None]
    for ax, field in zip(axes[3:], ("is/weight_mean", "is/ess")):
        for k, (fr, mean, se, _n) in sorted(curves(train, field).items()):
            ax.plot(fr, mean, color=colors.get(k[1], "k"), ls=styles.get(k[2], "-"), lw=1.0,
                    label=f"{k[1]} b={k[2]:g}")
        ax.set_title(f"training batches: {field} (IS methods)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("fraction of training")
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[3].set_yscale("log")
    legend_ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    legend_ax.legend(handles, labels, loc="center", fontsize=7, ncol=2 if len(labels) > 12 else 1,
                     title="line style = beta", title_fontsize=8)
    return _save(fig, out / "fig6_importance.png")


def fig_components(points, out: Path) -> Path | None:
    """The golden reward's components over training: HOW a policy over-optimizes."""
    main = [r for r in points if r["group"] == "main" and r.get("coverage") is not None]
    if not main:
        return None
    plt = _plt()
    comps = ("coverage", "repeated", "hallucinated", "length_words", "no_eos")
    betas = sorted({r["beta"] for r in main})
    colors = _colors({r["label"] for r in main})
    fig, axes = plt.subplots(len(betas), len(comps), figsize=(3.0 * len(comps), 2.6 * len(betas)),
                             squeeze=False, sharex=True)
    for c, comp in enumerate(comps):
        cur = curves(main, comp)
        for b, beta in enumerate(betas):
            ax = axes[b][c]
            for k, (fr, mean, se, _n) in sorted(cur.items()):
                if k[2] == beta:
                    ax.plot(fr, mean, color=colors[k[1]], label=k[1], lw=1.3)
            ax.set_title(f"{comp} (beta {beta:g})", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("fraction of training")
    return _save(fig, out / "fig_components.png")


def fig_regimes(summary, out: Path) -> Path | None:
    reg = _regime_rows(summary)
    if not reg:
        return None
    plt = _plt()
    opts = sorted({s["optimizer"] for s in reg})
    colors = _colors({s["label"] for s in reg})
    fig, axes = plt.subplots(2, len(opts), figsize=(4.5 * len(opts), 6), squeeze=False)
    for c, opt in enumerate(opts):
        for lab in sorted({s["label"] for s in reg}):
            rs = sorted((s for s in reg if s["optimizer"] == opt and s["label"] == lab), key=lambda s: s["lr"])
            if not rs:
                continue
            lrs = [s["lr"] for s in rs]
            axes[0][c].errorbar(lrs, [s["final_win_rate"] for s in rs], yerr=[s["final_win_rate_se"] for s in rs],
                                color=colors[lab], marker="o", capsize=2, label=lab)
            axes[1][c].plot(lrs, [s["final_sqrt_kl"] for s in rs], color=colors[lab], marker="o")
        axes[0][c].set_title(opt)
        for r in range(2):
            axes[r][c].set_xscale("log")
            axes[r][c].grid(alpha=0.3)
        axes[1][c].set_xlabel("learning rate")
    axes[0][0].set_ylabel("final golden win rate")
    axes[1][0].set_ylabel("final sqrt KL")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, out / "fig_regimes.png")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


