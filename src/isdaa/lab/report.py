"""The lab's report: DIR/report.md, figures/*.png (drawn by isdaa.lab.figures), csv/*.csv, all from the
saved results.

Reads only files (lab.json, runs/*/lab_spec.json, eval/*.json, metrics.jsonl, ratios.jsonl,
eval/samples/*.jsonl) through isdaa.lab.aggregate; never imports the trainer. Every number in report.md is
also in a CSV; the findings and the Regimes section are generated from those numbers with the rules
stated in the text (nothing hand-written, nothing tuned).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from isdaa.io import atomic_write_csv, atomic_write_json, atomic_write_text, read_jsonl
from isdaa.lab import task
from isdaa.lab.aggregate import (
    ALPHA,
    FINAL_K,
    POINT_FIELDS,
    SUMMARY_FIELDS,
    TRAIN_FIELDS,
    VERDICTS,
    attach_final_steps,
    by_config,
    clip_table,
    collect_per_prompt,
    collect_points,
    collect_train_metrics,
    config_key,
    eval_prompts,
    finished_runs,
    is_comparisons,
    mechanism_stats,
    preset_specs,
    regime_of,
    regime_title,
    run_stats,
    summarize,
)

COMPARISON_FIELDS = ["group", "beta", "regime", "is", "base", "n_seeds", "is_final", "base_final", "diff",
                     "se_seeds", "df_seeds", "t_seeds", "paired_diff", "paired_se", "n_prompts", "t_prompts",
                     "is_final_kl", "base_final_kl", "verdict"]
VERDICT_TITLES = {"helped": "IS helped", "hurt": "IS hurt", "no clear difference": "No clear difference",
                  "untested over seeds": "Untested over seeds", "untested": "Not testable"}
STATS_TEXT = (
    "Per run: peak = the maximum win rate over its checkpoints (biased upwards: a max over noisy points); "
    "smoothed peak = the maximum of the centred 3-checkpoint moving average (2 at the ends); "
    f"final = the mean win rate of the last {FINAL_K} checkpoints; final KL = the last checkpoint's k1; "
    "drop = smoothed peak - final. Each cell is the mean +- se over seeds (std / sqrt(n)); one seed: no se."
)


# ---------------------------------------------------------------------------------------------------
# Findings (generated text)


def _fmt(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _pm(mean, se, nd=3) -> str:
    """`0.753 +- 0.012`, or `0.753` when the se is undefined (one seed)."""
    return _fmt(mean, nd) + ("" if se is None or math.isnan(se) else f" +- {se:.{nd}f}")


def _seeds(n: int) -> str:
    return "(1 seed)" if n == 1 else f"({n} seeds)"


def findings(summary: list[dict], points: list[dict], drop_threshold: float) -> list[str]:
    lines: list[str] = []
    main = [s for s in summary if s["group"] == "main"] or summary
    if main:
        ref = np.nanmean([s["ref_win_rate"] for s in main])
        lines.append(f"pi_ref's golden win rate against the chosen responses: {_fmt(ref)}.")
        over = [s for s in main if s["over_optimized"]]
        kept = [s for s in main if not s["over_optimized"]]
        if over:
            lines.append(
                f"Over-optimized (smoothed peak minus final win rate > {drop_threshold:g}): "
                + ", ".join(f"{s['name']} (beta {s['beta']:g}: smoothed peak {_pm(s['smoothed_peak'], s['smoothed_peak_se'])}"
                            f" near sqrt KL {_fmt(s['smoothed_peak_sqrt_kl'], 2)}, final {_pm(s['final_win_rate'], s['final_win_rate_se'])}"
                            f" {_seeds(s['n_seeds'])})" for s in over) + "."
            )
        if kept:
            lines.append("Did not over-optimize by that criterion: "
                         + ", ".join(f"{s['name']} (beta {s['beta']:g}, drop {_pm(s['drop'], s['drop_se'])} "
                                     f"{_seeds(s['n_seeds'])})" for s in kept) + ".")
        for beta in sorted({s["beta"] for s in main}):
            at = sorted((s for s in main if s["beta"] == beta), key=lambda s: s["final_kl"])
            lines.append(f"beta {beta:g}: final KL (k1) from lowest to highest: "
                         + ", ".join(f"{s['name']} {_fmt(s['final_kl'], 2)}" for s in at)
                         + f"; highest final win rate: {max(at, key=lambda s: s['final_win_rate'])['name']}.")
    lines += mechanism(summary, points)
    lines += clip_findings(summary)
    return lines


def comparison_sentence(c: dict) -> str:
    s, b = c["is"], c["base"]
    verdict = VERDICT_TITLES[c["verdict"]]
    seeds = (f"; over seeds: diff {c['diff']:+.3f}, se {c['se_seeds']:.3f}, Welch df {c['df_seeds']:.1f} "
             f"(t {c['t_seeds']:.2f})" if not math.isnan(c["se_seeds"])
             else " (1 seed)" if c["n_seeds"] == 1 else "")
    paired = (f"; paired over {c['n_prompts']} prompts: {c['paired_diff']:+.3f}, se {c['paired_se']:.3f} "
              f"(t {c['t_prompts']:.2f})" if c["n_prompts"] else "; no per-prompt records to pair")
    return (f"{verdict}: {s['name']} vs {b['name']} (beta {s['beta']:g}; {regime_title(s)}): final win rate "
            f"{_pm(s['final_win_rate'], s['final_win_rate_se'])} vs {_pm(b['final_win_rate'], b['final_win_rate_se'])}"
            f"{seeds}{paired}; smoothed peak {_fmt(s['smoothed_peak'])} vs {_fmt(b['smoothed_peak'])}; "
            f"final KL {_fmt(s['final_kl'], 2)} vs {_fmt(b['final_kl'], 2)} ({_kl_change(c)}).")


def mechanism_sentence(name: str, row: dict, m: dict) -> str:
    """What the IS weights did during one configuration's training, from its per-step metrics."""
    parts = [f"median ESS {_fmt(m['ess_median'], 3)} (min {_fmt(m['ess_min'], 3)})"]
    if m["n_below"]:
        parts.append(f"ESS < 0.1 from {100 * m['ess_below_0.1_at']:.0f}% of training on "
                     f"({m['n_below']} of {m['n_runs']} runs)")
    else:
        parts.append("ESS never below 0.1")
    parts.append(f"w_max at the clip e^(2 eps) in {100 * m['at_clip_frac']:.0f}% of steps")
    parts.append(f"mean clipped fraction {_fmt(m['clip_frac_mean'], 3)}")
    parts.append("top pair's median share of the batch weight "
                 + (_fmt(m["top_share_median"], 3) if m["top_share_median"] is not None else "not logged in these runs"))
    return f"{name} (beta {row['beta']:g}; {regime_title(row)}) {_seeds(m['n_runs'])}: " + ", ".join(parts) + "."


def mechanism(summary: list[dict], points: list[dict]) -> list[str]:
    """How the over-optimized runs lost reward: the golden reward's components at the peak vs the end."""
    lines = []
    comps = ("coverage", "repeated", "hallucinated", "length_words", "no_eos")
    runs = by_config(points)
    for s in summary:
        if not s["over_optimized"] or s["group"] != "main":
            continue
        peak, end = [], []
        for rows in runs[config_key(s)].values():
            rows = sorted(rows, key=lambda r: r["step"])
            if rows[0].get("coverage") is None:
                continue
            st = run_stats(rows)
            peak.append(next(r for r in rows if r["step"] == st["smoothed_peak_step"]))
            end.append(rows[-1])
        if not peak:
            continue
        parts = [f"{c} {np.mean([r[c] for r in peak]):.2f} -> {np.mean([r[c] for r in end]):.2f}" for c in comps]
        lines.append(f"{s['name']} (beta {s['beta']:g}), smoothed peak's checkpoint -> last checkpoint: " + ", ".join(parts) + ".")
    return lines


def clip_findings(summary: list[dict]) -> list[str]:
    clip = clip_table(summary)
    if len(clip) < 2:
        return []
    return [f"Clip ablation ({clip[0][1]['method']}, beta {clip[0][1]['beta']:g}): " + "; ".join(
        f"eps {e:g}: final win rate {_pm(s['final_win_rate'], s['final_win_rate_se'])}, final KL "
        f"{_fmt(s['final_kl'], 2)} {_seeds(s['n_seeds'])}" for e, s in clip) + "."]


def regimes_section(comparisons: list[dict], mech: dict, summary: list[dict], mech_figs) -> list[str]:
    """The Regimes section: where IS helped, hurt, made no clear difference; the weights' behaviour."""
    out = ["## Regimes: where importance sampling helps\n",
           f"IS-<m> against <m> at the same beta, optimizer, learning rate, schedule, data and steps. `helped` / "
           f"`hurt` when the final win rates (mean of the last {FINAL_K} checkpoints) differ, two-sided at level "
           f"{ALPHA:g}, both over seeds (Welch's t, Welch-Satterthwaite df: 3 vs 3 seeds of equal spread give df 4, "
           "t 2.78) and in the paired comparison over the same evaluation prompts (per-prompt win rates, averaged "
           "over seeds; paired t, df = prompts - 1); otherwise `no clear difference`. With one seed on a side the "
           "run-to-run variation is unknown: `untested over seeds` (the paired numbers are still given).\n"]
    if not comparisons:
        out.append("No IS run has a matching base-method run in this folder: nothing to compare.\n")
    out += [f"- {line}" for line in regime_overview(comparisons)] + ([""] if comparisons else [])
    for verdict, title in VERDICT_TITLES.items():
        cs = [c for c in comparisons if c["verdict"] == verdict]
        if cs:
            out += [f"**{title}** ({len(cs)} of {len(comparisons)}):\n", *[f"- {comparison_sentence(c)}" for c in cs], ""]
    if comparisons:
        out += ["Map (final win rate: base vs IS; smoothed peak -> final; final KL):\n", _regime_map(comparisons)]
    if mech:
        names = {config_key(s): (s["name"], s) for s in summary}
        out += ["**Mechanism** (the trainer's per-step weights of the IS runs, mean over seeds):\n"]
        out += [f"- {mechanism_sentence(*names[k], m)}" for k, m in sorted(mech.items(), key=lambda kv: str(kv[0]))
                if k in names]
        out.append("")
    for title, path in mech_figs:
        out += [f"Win rate over optimizer steps next to the IS weights' ESS, w_max, clipped fraction and top-pair "
                f"share (rolling mean over 2% of the steps), {title}:\n", f"![mechanism](figures/{Path(path).name})\n"]
    return out


def _kl_change(c: dict) -> str:
    """IS's final KL relative to the base's, e.g. `-50%`."""
    b, s = c["base"]["final_kl"], c["is"]["final_kl"]
    return f"{100 * (s - b) / b:+.0f}%" if b > 0 else "n/a"


def regime_overview(comparisons: list[dict]) -> list[str]:
    """The verdicts split by whether the base method over-optimized in that regime, with IS's final KL
    relative to the base's: where IS helps, in one line each."""
    lines = []
    for over, where in ((True, "where the base method over-optimized"), (False, "where it did not")):
        cs = [c for c in comparisons if c["base"]["over_optimized"] == over]
        if not cs:
            continue
        count = {v: sum(c["verdict"] == v for c in cs) for v in VERDICTS}
        one = sum(c["n_seeds"] == 1 for c in cs)
        kl = [c["is"]["final_kl"] / c["base"]["final_kl"] for c in cs if c["base"]["final_kl"] > 0]
        lines.append(
            f"{where.capitalize()} ({len(cs)} comparisons{f', {one} of them on 1 seed' if one else ''}): IS helped "
            f"{count['helped']}, hurt {count['hurt']}, no clear difference {count['no clear difference']}"
            + _untested(count) + (f"; IS's final KL was {min(kl):.2f}-{max(kl):.2f} x the base's" if kl else "") + ".")
    return lines


def _regime_map(comparisons: list[dict]) -> str:
    rows = []
    for c in sorted(comparisons, key=lambda c: (regime_of(c["is"]), c["is"]["beta"], c["is"]["name"])):
        s, b = c["is"], c["base"]
        rows.append({"regime": regime_title(s), "beta": s["beta"], "pair": f"{s['name']} vs {b['name']}",
                     "seeds": c["n_seeds"],
                     "base": f"{_fmt(b['smoothed_peak'])} -> {_pm(b['final_win_rate'], b['final_win_rate_se'])}",
                     "is": f"{_fmt(s['smoothed_peak'])} -> {_pm(s['final_win_rate'], s['final_win_rate_se'])}",
                     "paired": f"{c['paired_diff']:+.3f} +- {c['paired_se']:.3f}" if c["n_prompts"] else "n/a",
                     "kl": f"{_fmt(b['final_kl'], 2)} / {_fmt(s['final_kl'], 2)}", "verdict": c["verdict"]})
    return _table(rows, [("regime", "regime", ""), ("beta", "beta", "3"), ("pair", "IS vs base", ""),
                         ("seeds", "seeds", ""), ("base", "base: sm. peak -> final", ""),
                         ("is", "IS: sm. peak -> final", ""), ("paired", "paired diff +- se", ""),
                         ("kl", "final KL base / IS", ""), ("verdict", "verdict", "")])


def comparison_rows(comparisons: list[dict]) -> list[dict]:
    """The comparisons as flat CSV rows."""
    return [{"group": c["group"], "beta": c["is"]["beta"], "regime": regime_title(c["is"]), "is": c["is"]["name"],
             "base": c["base"]["name"], "n_seeds": c["n_seeds"], "is_final": c["is"]["final_win_rate"],
             "base_final": c["base"]["final_win_rate"], "diff": c["diff"], "se_seeds": c["se_seeds"],
             "df_seeds": c["df_seeds"], "t_seeds": c["t_seeds"], "paired_diff": c["paired_diff"],
             "paired_se": c["paired_se"], "n_prompts": c["n_prompts"], "t_prompts": c["t_prompts"],
             "is_final_kl": c["is"]["final_kl"], "base_final_kl": c["base"]["final_kl"], "verdict": c["verdict"]}
            for c in comparisons]


# ---------------------------------------------------------------------------------------------------
# Gao et al. fits


def gao_fits(points: list[dict]) -> tuple[dict, list[dict]]:
    """RL-form fit R(d) = d (alpha - beta log d) of (win rate - reference) vs d = sqrt KL, per (name,
    beta) of the main grid, through `isdaa.evaluate.fits` (none if that module is unavailable)."""
    try:
        from isdaa.evaluate.fits import fit_gao_rl
    except ImportError:
        return {}, []
    fits, rows = {}, []
    main = [r for r in points if r["group"] == "main"]
    for lab, beta in sorted({(r["name"], r["beta"]) for r in main}):
        rs = [r for r in main if r["name"] == lab and r["beta"] == beta]
        r0 = float(np.mean([r["win_rate"] for r in rs if r["step"] == 0] or [0.0]))
        d = np.array([r["sqrt_kl"] for r in rs if r["step"] > 0])
        y = np.array([r["win_rate"] - r0 for r in rs if r["step"] > 0])
        if len(d) < 3:
            continue
        try:
            fit = fit_gao_rl(d, y)
        except Exception as err:  # a degenerate fit is reported, not fatal
            rows.append({"name": lab, "beta": beta, "error": str(err)})
            continue
        alpha, b = _fit_params(fit)
        fits[(lab, beta)] = {"alpha": alpha, "beta": b, "r0": r0}
        rows.append({"name": lab, "beta": beta, "alpha": alpha, "beta_fit": b, "r0": r0})
    return fits, rows


def _fit_params(fit) -> tuple[float, float]:
    if isinstance(fit, dict):
        return float(fit["alpha"]), float(fit["beta"])
    if hasattr(fit, "alpha"):
        return float(fit.alpha), float(fit.beta)
    return float(fit[0]), float(fit[1])


# ---------------------------------------------------------------------------------------------------
# The report


def _table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in cols) + " |\n|" + "|".join("---:" for _ in cols) + "|\n"
    body = ""
    for r in rows:
        cells = []
        for key, _title, fmt in cols:
            v = r.get(key)
            if isinstance(v, tuple):  # (mean, se)
                cells.append(_pm(v[0], v[1], int(fmt)))
            else:
                cells.append(_fmt(v, int(fmt)) if isinstance(v, float) else str(v))
        body += "| " + " | ".join(cells) + " |\n"
    return head + body


TABLE1_COLS = [("name", "method", ""), ("beta", "beta", "3"), ("n_seeds", "seeds", ""),
               ("peak", "peak WR", "3"), ("smoothed", "smoothed peak", "3"),
               ("smoothed_peak_sqrt_kl", "sqrt KL at sm. peak", "2"), ("smoothed_peak_fraction", "sm. peak at", "2"),
               ("final", "final WR", "3"), ("final_kl_pm", "final KL", "2"), ("drop_pm", "drop", "3")]
GROUP_COLS = [("group", "group", ""), ("optimizer", "optimizer", ""), ("lr", "lr", "6"), ("scheduler", "schedule", ""),
              ("warmup_ratio", "warmup", "3"), ("n_pairs", "pairs", ""), ("steps", "steps", ""), ("runs", "runs", "")]


def _table1_rows(rows: list[dict]) -> list[dict]:
    return [dict(s, peak=(s["peak_win_rate"], s["peak_win_rate_se"]),
                 smoothed=(s["smoothed_peak"], s["smoothed_peak_se"]),
                 final=(s["final_win_rate"], s["final_win_rate_se"]), final_kl_pm=(s["final_kl"], s["final_kl_se"]),
                 drop_pm=(s["drop"], s["drop_se"])) for s in rows]


def training_groups(summary: list[dict]) -> list[dict]:
    """How each group's runs were stepped: one row per (group, regime) with the number of runs."""
    out: dict = {}
    for s in summary:
        key = (s["group"],) + tuple("" if v is None else v for v in regime_of(s))
        row = out.setdefault(key, dict(s, n_pairs="all" if s["n_pairs"] is None else s["n_pairs"], runs=0))
        row["runs"] += s["n_seeds"]
    return [out[k] for k in sorted(out, key=str)]


def write_report(root: str | Path, preset=None) -> dict:
    """Write DIR/report.md, DIR/figures/*.png, DIR/csv/*.csv; return paths and the summary lines."""
    root = Path(root)
    lab = json.loads((root / "lab.json").read_text())
    p = lab["preset"]
    threshold = float(p.get("overopt_drop", 0.05))
    specs = preset_specs(preset if preset is not None else p)  # the reported preset's runs, as it names them
    points = collect_points(root, specs)
    train_rows = collect_train_metrics(root, specs)
    summary = summarize(points, threshold)
    attach_final_steps(summary, points)
    comparisons = is_comparisons(summary, collect_per_prompt(root, specs))
    mech = mechanism_stats(train_rows)
    _fits, fit_rows = gao_fits(points)
    csv_dir, fig_dir = root / "csv", root / "figures"
    atomic_write_csv(csv_dir / "points.csv", points, POINT_FIELDS)
    atomic_write_csv(csv_dir / "summary.csv", summary, SUMMARY_FIELDS)
    atomic_write_csv(csv_dir / "train_metrics.csv", train_rows, TRAIN_FIELDS)
    atomic_write_csv(csv_dir / "is_comparisons.csv", comparison_rows(comparisons), COMPARISON_FIELDS)
    atomic_write_csv(csv_dir / "gao_fits.csv", fit_rows, ["name", "beta", "alpha", "beta_fit", "r0", "error"])
    for run_cfg in (d / "config.yaml" for d, _ in finished_runs(root, specs)):
        (root / "configs").mkdir(exist_ok=True)
        atomic_write_text(root / "configs" / f"{run_cfg.parent.name}.yaml", run_cfg.read_text())
    from isdaa.lab import figures as f

    figs = {
        "fig3": f.fig_winrate_vs_kl(points, fig_dir),
        "fig4": f.fig_dynamics(points, fig_dir),
        "fig5": f.fig_clip(summary, fig_dir),
        "fig6": f.fig_importance(points, train_rows, fig_dir),
        "components": f.fig_components(points, fig_dir),
        "regimes": f.fig_regimes(summary, fig_dir),
    }
    mech_figs = f.fig_mechanism(points, train_rows, fig_dir)
    found = findings(summary, points, threshold)
    label_stats = _read_marker(root, "label")
    five = five_lines(summary, label_stats, threshold, comparisons)
    regimes = regimes_section(comparisons, mech, summary, mech_figs) if summary else []
    drift_md = ""
    if summary:  # the golden-free drift alarm: its own section, CSVs and figures
        from isdaa.lab.drift import drift_section

        drift_md = drift_section(root, specs)[0]
    md = _markdown(lab, summary, found, figs, label_stats, threshold, five, examples_table(root, summary, points),
                   regimes, drift_md)
    atomic_write_text(root / "report.md", md)
    atomic_write_json(root / "csv" / "findings.json",
                      {"findings": found, "summary_lines": five,
                       "comparisons": [comparison_sentence(c) for c in comparisons]})
    return {"report": str(root / "report.md"), "summary_lines": five, "n_points": len(points),
            "n_runs": len({r["run_id"] for r in points})}


def examples_table(root: Path, summary: list[dict], points: list[dict], n: int = 5) -> str:
    """Responses of the configuration with the largest drop (its lowest seed), for the first `n`
    evaluation prompts: pi_ref, the peak checkpoint, the last checkpoint (first sample each, with its
    golden reward)."""
    main = [s for s in summary if s["group"] == "main" and s["method"] != "online-dpo"] or \
        [s for s in summary if s["method"] != "online-dpo"]
    if not main:
        return ""
    worst = max(main, key=lambda s: s["drop"])
    runs = by_config(points)[config_key(worst)]
    rows = sorted(min(runs.values(), key=lambda rs: rs[0]["seed"]), key=lambda r: r["step"])
    stats = run_stats(rows)
    peak = next(r for r in rows if r["win_rate"] == stats["peak"])
    final = rows[-1]
    prompts = eval_prompts(root)
    run_dir = root / "runs" / rows[0]["run_id"] / "eval" / "samples"

    def first(step):
        path = run_dir / ("reference.jsonl" if step == 0 else f"step-{step:08d}.jsonl")
        out = {}
        for rec in read_jsonl(path) if path.exists() else []:
            out.setdefault(rec["prompt_idx"], rec)
        return out

    cols = [(0, "pi_ref"), (peak["step"], f"peak (step {peak['step']})"), (final["step"], f"last (step {final['step']})")]
    samples = [first(step) for step, _ in cols]
    lines = [f"Run `{rows[0]['run_id']}` ({worst['name']}, beta {worst['beta']:g}: the largest drop), first sample "
             "per prompt, golden reward in brackets:\n",
             "| prompt | keys | " + " | ".join(t for _, t in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for i in range(min(n, len(prompts))):
        cells = []
        for smp in samples:
            rec = smp.get(i)
            cells.append(f"`{rec['response'] or '(empty)'}` [{rec['reward']:+.1f}]" if rec else "")
        lines.append(f"| `{prompts[i]}` | {' '.join(task.prompt_keys(prompts[i]))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _read_marker(root: Path, stage: str) -> dict:
    path = root / "stages" / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def five_lines(summary: list[dict], label_stats: dict, threshold: float, comparisons=None) -> list[str]:
    """The report's (and the CLI's) summary: the main grid's, or every group's when there is no main grid
    (e.g. the regimes preset); one line when no run has finished."""
    rows = [s for s in summary if s["group"] == "main"] or summary
    if not rows:
        return ["no finished runs"]
    comparisons = is_comparisons(summary) if comparisons is None else comparisons
    ref = float(np.nanmean([s["ref_win_rate"] for s in rows]))
    best_peak = max(rows, key=lambda s: s["smoothed_peak"])
    best_final = max(rows, key=lambda s: s["final_win_rate"])
    over = [f"{s['name']}@{s['beta']:g}" for s in rows if s["over_optimized"]]
    count = {v: sum(c["verdict"] == v for c in comparisons) for v in VERDICTS}
    seeds = sorted({s["n_seeds"] for s in rows})
    return [
        f"pi_ref win rate {ref:.3f}; D_golden {label_stats.get('train', {}).get('n_pairs', '?')} pairs; "
        f"{len(rows)} configurations x {'/'.join(map(str, seeds))} seed(s)",
        f"best smoothed peak: {best_peak['name']} beta {best_peak['beta']:g}: "
        f"{_pm(best_peak['smoothed_peak'], best_peak['smoothed_peak_se'])} near sqrt KL "
        f"{best_peak['smoothed_peak_sqrt_kl']:.2f}",
        f"best final: {best_final['name']} beta {best_final['beta']:g}: "
        f"{_pm(best_final['final_win_rate'], best_final['final_win_rate_se'])} (KL {best_final['final_kl']:.2f})",
        f"over-optimized (smoothed peak - final > {threshold:g}): {', '.join(over) if over else 'none'}",
        f"IS vs base method: helped {count['helped']}, hurt {count['hurt']}, no clear difference "
        f"{count['no clear difference']}" + _untested(count) + f" (of {len(comparisons)} comparisons)",
    ]


def _untested(count: dict) -> str:
    return ((f", untested over seeds {count['untested over seeds']}" if count["untested over seeds"] else "")
            + (f", not testable {count['untested']}" if count["untested"] else ""))


def _learning_rate_text(summary: list[dict]) -> str:
    """How the learning rate was chosen (presets.CALIBRATION), when the runs use PAPER_LR."""
    from isdaa.lab.presets import CALIBRATION, CALIBRATION_LRS, PAPER_LR

    if not any(math.isclose(s["lr"], PAPER_LR) for s in summary):
        return ""
    return (f" Learning rate {PAPER_LR:g}: "
            + CALIBRATION.format(lrs=", ".join(f"{lr:g}" for lr in CALIBRATION_LRS)) + ".")


def _markdown(lab, summary, found, figs, label_stats, threshold, five, examples="", regimes=(), drift_md="") -> str:
    p, env = lab["preset"], lab["environment"]
    ev = p["evaluation"]
    out = [f"# isdaa lab report: preset `{p['name']}`\n",
           "## Summary\n", *[f"- {line}" for line in five], "",
           "## The environment\n",
           "Key-token summary (`isdaa.lab.task`): a prompt of 10 tokens holds 2-4 distinct key tokens among "
           "fillers; the response should list exactly the keys and end with EOS. Golden reward "
           f"r*(x, y) = `{env['reward_formula']}` (`{lab['golden_reward']}`; components in "
           "`reward_components`). Full definition: `task/definition.json`.\n",
           f"- pi_ref: tiny Llama ({env['model']['num_layers']} layers, width {env['model']['hidden_size']}) "
           f"SFT on {p['n_sft']} demonstrations x {p['sft_epochs']} epochs (batch {p['sft_batch']}, lr {p['sft_lr']:g}).",
           f"- D_golden: {p['n_pairs']} prompts x two pi_ref samples at T=1, Bradley-Terry labels on r*, "
           f"pi_ref log-probs as behaviour columns; "
           f"**{label_stats.get('train', {}).get('n_pairs', '?')} pairs trained on**. Their chosen mean reward "
           f"{_fmt(label_stats.get('train', {}).get('chosen_reward'), 2)}, rejected "
           f"{_fmt(label_stats.get('train', {}).get('rejected_reward'), 2)}, ties "
           f"{_fmt(label_stats.get('train', {}).get('tie_frac'), 2)}. Dropped before training (`pipeline.consistent_pairs`): "
           f"{label_stats.get('dropped_pairs', {}).get('empty_response', 0)} pairs with an empty response, "
           f"{label_stats.get('dropped_pairs', {}).get('identical', 0)} of two identical responses, "
           f"{label_stats.get('dropped_pairs', {}).get('unfinished', 0)} with a response cut at the length limit, "
           f"{label_stats.get('dropped_pairs', {}).get('not_reproducible', 0)} whose text does not reproduce the "
           f"sampled tokens.",
           f"- Training: {p['epochs']} epochs, batch {p['batch']} pairs (the same for every method); checkpoints at "
           f"fractions {', '.join(f'{f:g}' for f in p['save_fractions'])}.{_learning_rate_text(summary)} "
           "How each group's runs were stepped:\n",
           _table(training_groups(summary), GROUP_COLS) if summary else "",
           f"- Evaluation per checkpoint: {ev['n_prompts']} held-out prompts x {ev['n_samples']} samples at "
           f"T={ev['temperature']}, top-p {ev['top_p']} against the held-out split's chosen responses (ties count "
           f"1/2); KL(pi_theta||pi_ref) from {ev['n_kl_samples']} separate T=1 samples per prompt (k1 plotted, k3 "
           f"in the CSV); importance ratios on {ev['n_ratio_pairs']} training pairs.",
           ""]
    if not summary:  # the summary says "no finished runs", once
        return "\n".join(out)
    out += ["## Findings (generated from the numbers)\n", *[f"- {f}" for f in found], ""]
    out += list(regimes)
    main = [s for s in summary if s["group"] == "main"]
    if main:
        out += ["## Table 1 analog\n", f"{STATS_TEXT} Over-optimized when drop > {threshold:g}.\n",
                _table(_table1_rows(main), TABLE1_COLS)]
    for group in sorted({s["group"] for s in summary} - {"main"}):  # clip, regimes, calibrate, ...
        rows = [s for s in summary if s["group"] == group]
        out += [f"## Group `{group}`\n", ("" if main else STATS_TEXT + "\n"),
                _table(_table1_rows(rows), [("optimizer", "opt", ""), ("lr", "lr", "6"), ("steps", "steps", "")]
                       + TABLE1_COLS)]
        main = main or rows  # the statistics are explained once
    if drift_md:
        out += [drift_md.rstrip() + "\n"]
    captions = {
        "fig3": "Figure 3 analog: golden win rate vs sqrt KL, one point per checkpoint; lines: Gao RL-form fits.",
        "fig4": "Figure 4 analog: win rate and sqrt KL over training (mean +- se over seeds).",
        "fig5": "Figure 5 analog: clip ablation of IS-DPO (final = mean of the last 2 checkpoints, +- se over seeds).",
        "fig6": "Figure 6 analog: importance ratio of the training pairs under the policy, and the ESS of the clipped weights.",
        "components": "The golden reward's components over training: how the policies over-optimize.",
        "regimes": "Regimes: final win rate and sqrt KL vs learning rate, Adam and SGD (mean +- se over seeds).",
    }
    if examples:
        out += ["## What the policies write\n", examples]
    out.append("## Figures\n")
    for name, path in figs.items():
        if path is not None:
            out += [f"{captions[name]}\n", f"![{name}](figures/{Path(path).name})\n"]
    out += ["## Files\n",
            "- `csv/points.csv`: every evaluated checkpoint (all raw numbers); `csv/summary.csv`: the tables; "
            "`csv/is_comparisons.csv`: IS vs base; `csv/train_metrics.csv`: the trainer's per-step metrics; "
            "`csv/gao_fits.csv`; `csv/findings.json`; `csv/drift_*.csv`: the drift alarm's analysis.",
            "- `configs/<run>.yaml`: every run's resolved config; `lab.json`: the preset; "
            "`task/definition.json`: the environment.", ""]
    return "\n".join(out)
