"""The lab report's sections, each an independent renderer of the report's data (`report.ReportData`):
`render(data) -> markdown.Section(markdown, figures, tables)`. Text is generated from the numbers with the
rules stated in it (nothing hand-written, nothing tuned); every number is also in a CSV table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from isdaa.lab import rundir
from isdaa.lab.aggregate import (
    ALPHA,
    CONTROL_KEEPS,
    FINAL_K,
    SUMMARY_FIELDS,
    TRAIN_FIELDS,
    VERDICTS,
    by_config,
    clip_table,
    component_fields,
    config_key,
    eval_prompts,
    is_comparisons,
    point_fields,
    regime_of,
    regime_title,
    run_stats,
)
from isdaa.lab.markdown import Section, Table, dashes, fmt, pm, seeds, table
from isdaa.lab.presets import CONTROLS_GROUP, GROUPS, MAIN, ONLINE

COMPARISON_FIELDS = ["group", "beta", "regime", "is", "base", "n_seeds", "is_final", "base_final", "diff",
                     "se_seeds", "df_seeds", "t_seeds", "paired_diff", "paired_se", "n_prompts", "t_prompts",
                     "is_final_kl", "base_final_kl", "verdict"]
VERDICT_TITLES = {"helped": "IS helped", "hurt": "IS hurt", "no clear difference": "No clear difference",
                  "untested over seeds": "Untested over seeds", "untested": "Not testable"}
STATS_TEXT = (
    "Per run: peak = the maximum win rate over its checkpoints (biased upwards: a max over noisy points); "
    "smoothed peak = the maximum of the centred 3-checkpoint moving average (2 at the ends), whose centre "
    "checkpoint gives the sqrt KL and fraction of training 'at the smoothed peak'; "
    f"final = the mean win rate of the last {FINAL_K} checkpoints; final KL = the last checkpoint's k1; "
    "drop = smoothed peak - final. Each cell is the mean +- se over seeds (std / sqrt(n)); one seed: no se."
)


# ---------------------------------------------------------------------------------------------------
# Text pieces


def findings(summary: list[dict], points: list[dict], drop_threshold: float, components=()) -> list[str]:
    """The findings, generated from the numbers with the rules stated in the text."""
    lines: list[str] = []
    main = [s for s in summary if s["group"] == MAIN] or summary
    if main:
        ref = np.nanmean([s["ref_win_rate"] for s in main])
        lines.append(f"pi_ref's golden win rate against the chosen responses: {fmt(ref)}.")
        over = [s for s in main if s["over_optimized"]]
        kept = [s for s in main if not s["over_optimized"]]
        if over:
            lines.append(
                f"Over-optimized (smoothed peak minus final win rate > {drop_threshold:g}): "
                + ", ".join(f"{s['name']} (beta {s['beta']:g}: "
                            f"smoothed peak {pm(s['smoothed_peak'], s['smoothed_peak_se'])}"
                            f" near sqrt KL {fmt(s['smoothed_peak_sqrt_kl'], 2)}, "
                            f"final {pm(s['final_win_rate'], s['final_win_rate_se'])}"
                            f" {seeds(s['n_seeds'])})" for s in over) + "."
            )
        if kept:
            lines.append("Did not over-optimize by that criterion: "
                         + ", ".join(f"{s['name']} (beta {s['beta']:g}, drop {pm(s['drop'], s['drop_se'])} "
                                     f"{seeds(s['n_seeds'])})" for s in kept) + ".")
        for beta in sorted({s["beta"] for s in main}):
            at = sorted((s for s in main if s["beta"] == beta), key=lambda s: s["final_kl"])
            lines.append(f"beta {beta:g}: final KL (k1) from lowest to highest: "
                         + ", ".join(f"{s['name']} {fmt(s['final_kl'], 2)}" for s in at)
                         + f"; highest final win rate: {max(at, key=lambda s: s['final_win_rate'])['name']}.")
    lines += mechanism(summary, points, components)
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
            f"{pm(s['final_win_rate'], s['final_win_rate_se'])} vs {pm(b['final_win_rate'], b['final_win_rate_se'])}"
            f"{seeds}{paired}; smoothed peak {fmt(s['smoothed_peak'])} vs {fmt(b['smoothed_peak'])}; "
            f"final KL {fmt(s['final_kl'], 2)} vs {fmt(b['final_kl'], 2)} ({_kl_change(c)}).")


def mechanism_sentence(name: str, row: dict, m: dict) -> str:
    """What the IS weights did during one configuration's training, from its per-step metrics."""
    parts = [f"median ESS {fmt(m['ess_median'], 3)} (min {fmt(m['ess_min'], 3)})"]
    if m["n_below"]:
        parts.append(f"ESS < 0.1 from {100 * m['ess_below_0.1_at']:.0f}% of training on "
                     f"({m['n_below']} of {m['n_runs']} runs)")
    else:
        parts.append("ESS never below 0.1")
    parts.append(f"w_max at the clip e^(2 eps) in {100 * m['at_clip_frac']:.0f}% of steps")
    parts.append(f"mean clipped fraction {fmt(m['clip_frac_mean'], 3)}")
    parts.append("top pair's median share of the batch weight "
                 + (fmt(m["top_share_median"], 3) if m["top_share_median"] is not None else "not logged in these runs"))
    return f"{name} (beta {row['beta']:g}; {regime_title(row)}) {seeds(m['n_runs'])}: " + ", ".join(parts) + "."


def mechanism(summary: list[dict], points: list[dict], comps=()) -> list[str]:
    """How the over-optimized runs lost reward: the golden reward's components (point columns, the task's)
    at the smoothed peak's checkpoint vs the end."""
    lines = []
    comps = list(comps)
    if not comps:
        return lines
    runs = by_config(points)
    for s in summary:
        if not s["over_optimized"] or s["group"] != "main":
            continue
        peak, end = [], []
        for rows in runs[config_key(s)].values():
            rows = sorted(rows, key=lambda r: r["step"])
            if rows[0].get(comps[0]) is None:
                continue
            st = run_stats(rows)
            peak.append(next(r for r in rows if r["step"] == st["smoothed_peak_step"]))
            end.append(rows[-1])
        if not peak:
            continue
        parts = [f"{c} {np.mean([r[c] for r in peak]):.2f} -> {np.mean([r[c] for r in end]):.2f}" for c in comps]
        lines.append(f"{s['name']} (beta {s['beta']:g}), smoothed peak's checkpoint -> last checkpoint: "
                     + ", ".join(parts) + ".")
    return lines


def clip_findings(summary: list[dict]) -> list[str]:
    clip = clip_table(summary)
    if len(clip) < 2:
        return []
    return [f"Clip ablation ({clip[0][1]['method']}, beta {clip[0][1]['beta']:g}): " + "; ".join(
        f"eps {e:g}: final win rate {pm(s['final_win_rate'], s['final_win_rate_se'])}, final KL "
        f"{fmt(s['final_kl'], 2)} {seeds(s['n_seeds'])}" for e, s in clip) + "."]


def regimes_lines(comparisons: list[dict], mech: dict, summary: list[dict], mech_figs) -> list[str]:
    """The Regimes section's markdown: where IS helped, hurt, made no clear difference; the weights'
    behavior."""
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
            out += [f"**{title}** ({len(cs)} of {len(comparisons)}):\n",
                    *[f"- {comparison_sentence(c)}" for c in cs], ""]
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
                     "base": f"{fmt(b['smoothed_peak'])} -> {pm(b['final_win_rate'], b['final_win_rate_se'])}",
                     "is": f"{fmt(s['smoothed_peak'])} -> {pm(s['final_win_rate'], s['final_win_rate_se'])}",
                     "paired": f"{c['paired_diff']:+.3f} +- {c['paired_se']:.3f}" if c["n_prompts"] else "n/a",
                     "kl": f"{fmt(b['final_kl'], 2)} / {fmt(s['final_kl'], 2)}", "verdict": c["verdict"]})
    return table(rows, [("regime", "regime", ""), ("beta", "beta", "3"), ("pair", "IS vs base", ""),
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
    main = [r for r in points if r["group"] == MAIN]
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



def five_lines(summary: list[dict], label_stats: dict, threshold: float, comparisons=None) -> list[str]:
    """The report's (and the CLI's) summary: the main grid's, or every group's when there is no main grid
    (e.g. the regimes preset); one line when no run has finished."""
    rows = [s for s in summary if s["group"] == MAIN] or summary
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
        f"{pm(best_peak['smoothed_peak'], best_peak['smoothed_peak_se'])} near sqrt KL "
        f"{best_peak['smoothed_peak_sqrt_kl']:.2f}",
        f"best final: {best_final['name']} beta {best_final['beta']:g}: "
        f"{pm(best_final['final_win_rate'], best_final['final_win_rate_se'])} (KL {best_final['final_kl']:.2f})",
        f"over-optimized (smoothed peak - final > {threshold:g}): {', '.join(over) if over else 'none'}",
        f"IS vs base method: helped {count['helped']}, hurt {count['hurt']}, no clear difference "
        f"{count['no clear difference']}" + _untested(count) + f" (of {len(comparisons)} comparisons)",
    ]


def _untested(count: dict) -> str:
    return ((f", untested over seeds {count['untested over seeds']}" if count["untested over seeds"] else "")
            + (f", not testable {count['untested']}" if count["untested"] else ""))



def examples_table(root: Path, summary: list[dict], points: list[dict], task=None, n: int = 5) -> str:
    """Responses of the configuration with the largest drop (its lowest seed), for the first `n`
    evaluation prompts: pi_ref, the smoothed peak's checkpoint, the last checkpoint (first sample each,
    with its golden reward); the task's `example_cells` as extra columns."""
    main = [s for s in summary if s["group"] == MAIN and s["method"] != ONLINE] or \
        [s for s in summary if s["method"] != ONLINE]
    if not main:
        return ""
    worst = max(main, key=lambda s: s["drop"])
    runs = by_config(points)[config_key(worst)]
    rows = sorted(min(runs.values(), key=lambda rs: rs[0]["seed"]), key=lambda r: r["step"])
    stats = run_stats(rows)
    peak = next(r for r in rows if r["step"] == stats["smoothed_peak_step"])
    final = rows[-1]
    prompts = eval_prompts(root)
    run_dir = root / "runs" / rows[0]["run_id"]
    names = {e["_step"]: e["_name"] for e in rundir.evals(run_dir)}

    def first(step):
        out = {}
        for rec in rundir.samples(run_dir, names[step]) if step in names else []:
            out.setdefault(rec["prompt_idx"], rec)
        return out

    cols = [(0, "pi_ref"), (peak["step"], f"smoothed peak (step {peak['step']})"),
            (final["step"], f"last (step {final['step']})")]
    samples = [first(step) for step, _ in cols]
    extra = list(task.example_cells(prompts[0])) if task is not None and prompts else []
    lines = [f"Run `{rows[0]['run_id']}` ({worst['name']}, beta {worst['beta']:g}: the largest drop), first sample "
             "per prompt, golden reward in brackets:\n",
             "| prompt | " + "".join(f"{c} | " for c in extra) + " | ".join(t for _, t in cols) + " |",
             "|---|" + "---|" * (len(extra) + len(cols))]
    for i in range(min(n, len(prompts))):
        cells = []
        for smp in samples:
            rec = smp.get(i)
            cells.append(f"`{rec['response'] or '(empty)'}` [{rec['reward']:+.1f}]" if rec else "")
        cells = [str(v) for v in (task.example_cells(prompts[i]).values() if extra else ())] + cells
        lines.append(f"| `{prompts[i]}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"




# ---------------------------------------------------------------------------------------------------
# The sections: render(data) -> Section


def summary_section(d) -> Section:
    return Section("\n".join(["## Summary\n", *[f"- {line}" for line in d.five], ""]))


def environment_section(d) -> Section:
    p, env, task = d.preset, d.lab.get("environment", {}), d.task
    ev = p["evaluation"]
    label, dropped = d.label_stats.get("train", {}), d.label_stats.get("dropped_pairs", {})
    name = env.get("task", "the task")
    about = f"{task.summary} " if task is not None and getattr(task, "summary", "") else ""
    ref = d.lab.get("task", d.lab.get("golden_reward", ""))
    model = env.get("model", {})
    cal = (p.get("calibration") or {})
    lr_text = (f" Learning rate {cal['lr']:g}: {cal['text']}." if cal and any(
        math.isclose(s["lr"], cal["lr"]) for s in d.summary) else "")
    out = ["## The environment\n",
           f"Task `{name}` (`{ref}`): {about}Golden reward r*(x, y) = `{env.get('reward_formula', '?')}` "
           "(components in `reward_components`). Full definition: `task/definition.json`.\n",
           f"- pi_ref: tiny Llama ({model.get('num_layers', '?')} layers, width {model.get('hidden_size', '?')}) "
           f"SFT on {p['n_sft']} demonstrations x {p['sft_epochs']} epochs "
           f"(batch {p['sft_batch']}, lr {p['sft_lr']:g}).",
           f"- D_golden: {p['n_pairs']} prompts x two pi_ref samples at T=1, Bradley-Terry labels on r*, "
           f"pi_ref log-probs as behavior columns; **{label.get('n_pairs', '?')} pairs trained on**. Their chosen "
           f"mean reward {fmt(label.get('chosen_reward'), 2)}, rejected {fmt(label.get('rejected_reward'), 2)}, ties "
           f"{fmt(label.get('tie_frac'), 2)}. Dropped before training (`pipeline.consistent_pairs`): "
           f"{dropped.get('empty_response', 0)} pairs with an empty response, {dropped.get('identical', 0)} of two "
           f"identical responses, {dropped.get('unfinished', 0)} with a response cut at the length limit, "
           f"{dropped.get('not_reproducible', 0)} whose text does not reproduce the sampled tokens."
           + _task_pair_stats(label.get("task")),
           f"- Training: {p['epochs']} epochs, batch {p['batch']} pairs (the same for every method); checkpoints at "
           f"fractions {', '.join(f'{f:g}' for f in p['save_fractions'])}.{lr_text} How each group's runs were "
           "stepped:\n",
           table(training_groups(d.summary), GROUP_COLS) if d.summary else "",
           f"- Evaluation per checkpoint: {ev['n_prompts']} held-out prompts x {ev['n_samples']} samples at "
           f"T={ev['temperature']}, top-p {ev['top_p']} against the held-out split's chosen responses (ties count "
           f"1/2); KL(pi_theta||pi_ref) from {ev['n_kl_samples']} separate T=1 samples per prompt (k1 plotted, k3 "
           f"in the CSV); importance ratios on {ev['n_ratio_pairs']} training pairs.", ""]
    return Section("\n".join(out))


def _task_pair_stats(stats: dict | None) -> str:
    """The task's own statistics of the trained pairs (`Task.pair_statistics`), e.g. the length task's design
    checks, as one sentence."""
    if not stats:
        return ""
    nums = ", ".join(f"{k} {fmt(v)}" for k, v in stats.items() if isinstance(v, (int, float)))
    checks = "; ".join(f"{k}: {v}" for k, v in (stats.get("design_checks") or {}).items())
    return f" The task's statistics of these pairs: {nums}" + (f" (design checks: {checks})" if checks else "") + "."


def findings_section(d) -> Section:
    return Section("\n".join(["## Findings (generated from the numbers)\n", *[f"- {f}" for f in d.findings], ""]))


def regimes_section(d) -> Section:
    from isdaa.lab import figures as f

    mech_figs = f.fig_mechanism(d.points, d.train_rows, d.root / "figures")
    md = regimes_lines(d.comparisons, d.mech, d.summary, mech_figs)
    return Section("\n".join(md), [p for _, p in mech_figs],
                   {"is_comparisons": Table(comparison_rows(d.comparisons), COMPARISON_FIELDS),
                    "train_metrics": Table(d.train_rows, TRAIN_FIELDS)})


def versus_section(d) -> Section:
    """IS-DPO against the mitigations a TRL user has (presets.MITIGATIONS), by the same tests as IS vs base."""
    if not d.versus:
        return Section("")
    md = ["## IS-DPO vs the mitigations\n", "The same tests as IS vs its base method (t over seeds and over "
          "prompts); `IS helped` means IS-DPO's final win rate is the higher.\n",
          *[f"- {comparison_sentence(c)}" for c in d.versus], ""]
    return Section("\n".join(md), tables={"is_versus": Table(comparison_rows(d.versus), COMPARISON_FIELDS)})


CONTROL_TEXT = {  # docs/METHOD.md: what each control keeps of IS-DPO's weights
    "permute": "the batch's weights shuffled among its pairs: keeps their scale and spread (ESS), not which pair "
               "gets which",
    "mean": "every pair gets the batch's mean weight: keeps the scale (the step shrinks as the weights do), no "
            "reweighting (ESS 1)",
    "matched_random": "log-normal weights of mean 1 with the batch's ESS: keeps the effective batch size, not the "
                      "scale nor the pairs",
}
CONTROLS_RULE = (
    "A control *keeps IS-DPO's win-rate effect* when it beats DPO (`helped` against DPO) and is not worse than "
    "IS-DPO (not `hurt` against IS-DPO); it *loses it* when it is worse than IS-DPO (`hurt`); otherwise the tests "
    "cannot tell. It *keeps the KL effect* when its final KL is closer to IS-DPO's than to DPO's on a log scale. "
    "Reading, by rule (an interpretation, not a measurement of cause): if no control keeps the win-rate effect, "
    "the pair-specific weights are what works (an importance correction of the distribution shift); if `mean` "
    "keeps it, a step size that decays as the weights shrink suffices (look at the update norms); if "
    "`matched_random` keeps it and `mean` does not, a smaller effective batch; if only `permute` keeps it, the "
    "weights' scale and spread together, not which pair gets which weight.")


def controls_reading(rows: list[dict], is_effect: str | None) -> list[str]:
    """The rule of CONTROLS_RULE applied to the controls' verdicts (`rows`: control_comparisons) given IS-DPO's
    own verdict against DPO (`is_effect`)."""
    out = []
    if is_effect != "helped":
        out.append(f"IS-DPO's verdict against DPO at this beta is `{is_effect or 'not available'}`: there is no "
                   "win-rate effect of IS-DPO for the controls to keep, so they compare step sizes and KL only.")
    keeps = {}
    for c in rows:
        name = c["control_name"]
        keeps[name] = c["keeps"]
        out.append(f"`{name}` ({CONTROL_TEXT.get(name, name)}): {c['keeps']} IS-DPO's win-rate effect "
                   f"(vs DPO: {c['vs_base_verdict']}, vs IS-DPO: {c['vs_is_verdict']}); "
                   + ("cannot tell about its KL effect (a run is missing)." if c["keeps_kl"] is None else
                      f"{'keeps' if c['keeps_kl'] else 'does not keep'} its KL effect."))
    if is_effect != "helped" or not keeps:
        return out
    kept = [n for n, k in keeps.items() if k == CONTROL_KEEPS[0]]
    if not kept:
        verdict = ("no control keeps the effect: the pair-specific weights are what works, consistent with an "
                   "importance correction of the distribution shift")
        if any(k == CONTROL_KEEPS[2] for k in keeps.values()):
            verdict += " (though the tests cannot tell for " + ", ".join(
                f"`{n}`" for n, k in keeps.items() if k == CONTROL_KEEPS[2]) + ")"
    elif "mean" in kept:
        verdict = ("`mean` keeps it: the batch's mean weight alone, a step size that decays as the weights shrink, "
                   "suffices")
    elif "matched_random" in kept:
        verdict = "`matched_random` keeps it and `mean` does not: consistent with a smaller effective batch"
    else:
        verdict = ("only " + ", ".join(f"`{n}`" for n in kept) + " keeps it: the weights' scale and spread together, "
                   "not which pair gets which weight")
    return out + [f"Reading by the rule: {verdict}."]


def controls_section(d) -> Section:
    """The IS-weight controls (group `controls`) against IS-DPO and DPO of the main grid: verdicts, KL, the
    weights' ESS and the optimizer step's norm per quarter of training, and the rule's reading."""
    from isdaa.lab import figures as f

    if not d.controls:
        return Section("")
    md = [f"## {GROUPS[CONTROLS_GROUP].title}: what IS-DPO's weights do\n",
          "Each control replaces IS-DPO's clipped weights within every optimizer step's batch (docs/METHOD.md); "
          "everything else is IS-DPO's. Verdicts by the same t tests as IS vs its base (over seeds and paired "
          f"over prompts, level {ALPHA:g}). Update norm = ||theta_t+1 - theta_t|| of each optimizer step (mean "
          "over each quarter of training, then over seeds; the cosine schedule shrinks every run's steps in the "
          "last quarters, so compare rows within a column). ESS and mean weight: the trainer's per-step batch "
          "weights (median over steps; mean weight over the last half).\n", CONTROLS_RULE + "\n"]
    rows, csv_rows = [], []
    by_beta: dict = {}
    for c in d.controls:
        by_beta.setdefault(c["control"]["beta"], []).append(c)
    for beta, cs in sorted(by_beta.items()):
        first = cs[0]
        lines = [("DPO", first["base_row"]), ("IS-DPO", first["is_row"])] + [(None, c["control"]) for c in cs]
        is_cmp = next((c for c in d.comparisons if first["is_row"] is not None and c["is"] is first["is_row"]), None)
        for label, row in lines:
            if row is None:
                continue
            key = config_key(row)
            st, mech, wm = d.steps.get(key, {}), d.mech.get(key, {}), d.weight_means.get(key)
            cmp = next((c for c in cs if c["control"] is row), None)
            rec = {"beta": beta, "name": row["name"], "n_seeds": row["n_seeds"],
                   "final": (row["final_win_rate"], row["final_win_rate_se"]),
                   "kl": (row["final_kl"], row["final_kl_se"]),
                   "ess": mech.get("ess_median"), "weight_mean_late": wm,
                   **{q: st.get(q) for q in ("q1", "q2", "q3", "q4")},
                   "vs_base": cmp["vs_base_verdict"] if cmp else ("-" if label == "DPO" else
                                                                  (is_cmp["verdict"] if is_cmp else "n/a")),
                   "vs_is": cmp["vs_is_verdict"] if cmp else "-"}
            rows.append(rec)
            csv_rows.append({**{k: v for k, v in rec.items() if k not in ("final", "kl")},
                             "final_win_rate": row["final_win_rate"], "final_win_rate_se": row["final_win_rate_se"],
                             "final_kl": row["final_kl"], "final_kl_se": row["final_kl_se"]})
        md += [f"**beta {beta:g}**\n", table(dashes(rows[-len([x for x in lines if x[1] is not None]):]), [
            ("name", "run", ""), ("n_seeds", "seeds", ""), ("final", "final WR", "3"), ("kl", "final KL", "2"),
            ("ess", "median ESS", "3"), ("weight_mean_late", "mean weight (2nd half)", "3"),
            ("q1", "update norm q1", "4"), ("q2", "q2", "4"), ("q3", "q3", "4"), ("q4", "q4", "4"),
            ("vs_base", "vs DPO", ""), ("vs_is", "vs IS-DPO", "")]),
            *[f"- {line}" for line in controls_reading(cs, is_cmp["verdict"] if is_cmp else None)], ""]
        md += [f"- {comparison_sentence(c['vs_is'])}" for c in cs if c["vs_is"]]
        md += [f"- {comparison_sentence(c['vs_base'])}" for c in cs if c["vs_base"]] + [""]
    figs = f.fig_controls(d.points, d.train_rows, d.controls, d.root / "figures")
    for path in figs:
        md += ["Win rate, the optimizer step's norm, the mean batch weight and its ESS over training (DPO, IS-DPO "
               "and the controls; rolling mean over 2% of the steps, mean over seeds):\n",
               f"![controls](figures/{Path(path).name})\n"]
    tables = {"controls": Table(csv_rows),
              "control_comparisons": Table(comparison_rows([x for c in d.controls for x in (c["vs_is"], c["vs_base"])
                                                            if x]), COMPARISON_FIELDS)}
    return Section("\n".join(md), figs, tables)


def cross_task_section(d) -> Section:
    """Table 1 side by side across lab folders (this one first, then `--compare` folders): per method and beta,
    each folder's final win rate, final KL and drop (mean +- se over seeds)."""
    if not d.others:
        return Section("")
    here = {"folder": str(d.root), "task": d.lab.get("environment", {}).get("task", "this folder"),
            "rows": [s for s in d.summary if s["group"] == MAIN], "preset": d.preset.get("name")}
    tabs = [here] + d.others
    order = list(dict.fromkeys((r["name"], float(r["beta"])) for t in tabs for r in t["rows"]))
    order.sort(key=lambda k: (k[1], next((i for i, t in enumerate(tabs) for j, r in enumerate(t["rows"])
                                          if (r["name"], float(r["beta"])) == k), 0)))
    cols = [("name", "method", ""), ("beta", "beta", "3")]
    rows, flat = [], []
    for name, beta in order:
        row, csv_row = {"name": name, "beta": beta}, {"name": name, "beta": beta}
        for i, t in enumerate(tabs):
            r = next((r for r in t["rows"] if r["name"] == name and math.isclose(float(r["beta"]), beta)), None)
            for key, field in (("wr", "final_win_rate"), ("kl", "final_kl"), ("drop", "drop")):
                row[f"{key}{i}"] = (r[field], r[f"{field}_se"]) if r else "-"
                csv_row[f"{field}[{t['task']}]"] = r[field] if r else None
        rows.append(row)
        flat.append(csv_row)
    for i, t in enumerate(tabs):
        cols += [(f"wr{i}", f"{t['task']}: final WR", "3"), (f"kl{i}", "final KL", "1"), (f"drop{i}", "drop", "3")]
    head = [f"- `{t['task']}`: `{t['folder']}` (preset `{t['preset']}`), pi_ref win rate "
            f"{fmt(float(np.nanmean([float(r['ref_win_rate']) for r in t['rows']])) if t['rows'] else None)}"
            for t in tabs]
    md = ["## Table 1 across tasks\n", "Final win rate (mean of the last 2 checkpoints), final KL (k1) and drop "
          "(smoothed peak - final), mean +- se over seeds; each task's own pi_ref, data and calibrated rate.\n",
          *head, "", table(rows, cols)]
    return Section("\n".join(md), tables={"cross_task": Table(flat)})


def groups_section(d) -> Section:
    """Table 1 (the main group) and one table per other group, titled from presets.GROUPS."""
    out = []
    main = [s for s in d.summary if s["group"] == MAIN]
    if main:
        out += [f"## {GROUPS[MAIN].title}\n", f"{STATS_TEXT} Over-optimized when drop > {d.threshold:g}.\n",
                table(_table1_rows(main), TABLE1_COLS)]
    for group in sorted({s["group"] for s in d.summary} - {MAIN}):
        rows = [s for s in d.summary if s["group"] == group]
        g = GROUPS.get(group)
        out += [f"## {g.title if g else 'Group'} (group `{group}`)\n", (g.text + "\n" if g else ""),
                ("" if main else STATS_TEXT + "\n"),
                table(_table1_rows(rows), [("optimizer", "opt", ""), ("lr", "lr", "6"), ("steps", "steps", "")]
                      + TABLE1_COLS)]
        main = main or rows  # the statistics are explained once
    return Section("\n".join(out), tables={"points": Table(d.points, point_fields(d.task)),
                                            "summary": Table(d.summary, SUMMARY_FIELDS)})


def examples_section(d) -> Section:
    ex = examples_table(d.root, d.summary, d.points, d.task)
    return Section(f"## What the policies write\n\n{ex}" if ex else "")


CAPTIONS = {
    "fig3": "Figure 3 analog: golden win rate vs sqrt KL, one point per checkpoint; lines: Gao RL-form fits; "
            "where a few runs stretch the axis, a second row zooms to where most configurations end.",
    "fig4": "Figure 4 analog: win rate and sqrt KL over training (mean +- se over seeds).",
    "fig5": "Figure 5 analog: clip ablation of IS-DPO (final = mean of the last 2 checkpoints, +- se over seeds).",
    "fig6": "Figure 6 analog: importance ratio of the training pairs under the policy, "
            "and the ESS of the clipped weights.",
    "components": "The golden reward's components over training: how the policies over-optimize.",
    "regimes": "Regimes: final win rate and sqrt KL vs learning rate, Adam and SGD (mean +- se over seeds).",
}


def figures_section(d) -> Section:
    from isdaa.lab import figures as f

    out = d.root / "figures"
    figs = {"fig3": f.fig_winrate_vs_kl(d.points, out), "fig4": f.fig_dynamics(d.points, out),
            "fig5": f.fig_clip(d.summary, out), "fig6": f.fig_importance(d.points, d.train_rows, out),
            "components": f.fig_components(d.points, out, component_fields(d.task)),
            "regimes": f.fig_regimes(d.summary, out)}
    md = ["## Figures\n"]
    for name, path in figs.items():
        if path is not None:
            md += [f"{CAPTIONS[name]}\n", f"![{name}](figures/{Path(path).name})\n"]
    _fits, fit_rows = gao_fits(d.points)
    return Section("\n".join(md), [p for p in figs.values() if p is not None],
                   {"gao_fits": Table(fit_rows, ["name", "beta", "alpha", "beta_fit", "r0", "error"])})


def drift_report_section(d) -> Section:
    """The golden-free drift alarm (isdaa.lab.drift)."""
    from isdaa.lab.drift import drift_section

    return drift_section(d.root, d.specs)


def timing_section(d) -> Section:
    """Wall times as measured: each stage's (its marker's `seconds`) and each configuration's runs (lab_done.json:
    training, and training + evaluation), mean over seeds, and the sum over every run of the report."""
    stages = []
    for stage in ("sft", "label"):
        path = d.root / "stages" / f"{stage}.json"
        rec = rundir.read_json(path) if path.exists() else {}
        if rec.get("seconds") is not None:
            stages.append(f"{stage} {rec['seconds']:.0f} s (finished {rec.get('finished_at', '?')})")
    per_config: dict = {}
    for r in d.points:
        if r["step"] == 0:
            per_config.setdefault(config_key(r), (r, {}))[1].setdefault(r["run_id"], None)
    rows, total = [], 0.0
    for _key, (r, runs) in per_config.items():
        recs = [rundir.done_record(d.root / "runs" / rid) or {} for rid in runs]
        train = [x["train_seconds"] for x in recs if x.get("train_seconds") is not None]
        both = [x["seconds"] for x in recs if x.get("seconds") is not None]
        total += sum(both)
        rows.append({"group": r["group"], "name": r["name"], "beta": r["beta"], "runs": len(runs),
                     "train": float(np.mean(train)) if train else None, "all": float(np.mean(both)) if both else None})
    if not rows:
        return Section("")
    rows.sort(key=lambda x: (x["group"] != MAIN, x["group"], x["name"], x["beta"]))
    md = ["## Wall times (as measured)\n",
          "Seconds of wall time on the machine that ran them, under whatever load it had (runs share the CPU with "
          "the sweep's other workers): stages " + (", ".join(stages) or "not recorded") + f"; all runs of this "
          f"report together {total / 3600:.2f} h of worker time. Per configuration, mean over its runs:\n",
          table(dashes(rows), [("group", "group", ""), ("name", "method", ""), ("beta", "beta", "3"),
                               ("runs", "runs", ""), ("train", "training s", "0"),
                               ("all", "training + evaluation s", "0")])]
    return Section("\n".join(md), tables={"wall_times": Table(rows)})


def files_section(d) -> Section:
    return Section("\n".join([
        "## Files\n",
        "- `csv/points.csv`: every evaluated checkpoint (all raw numbers); `csv/summary.csv`: the tables; "
        "`csv/is_comparisons.csv`: IS vs base; `csv/train_metrics.csv`: the trainer's per-step metrics; "
        "`csv/gao_fits.csv`; `csv/findings.json`; `csv/drift_*.csv`: the drift alarm's analysis.",
        "- `configs/<run>.yaml`: every run's resolved config; `lab.json`: the preset; "
        "`task/definition.json`: the environment.", ""]))


# The report, in order; the first two are written even when no run has finished
SECTIONS = (summary_section, environment_section, findings_section, regimes_section, versus_section, controls_section,
            groups_section, cross_task_section, drift_report_section, examples_section, figures_section, timing_section,
            files_section)
