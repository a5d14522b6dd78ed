"""The lab's drift analysis: does a golden-free signal announce over-optimization?

    markdown, figures, tables = drift_section(lab_root)

Reads only files of finished runs, through `isdaa.lab.rundir`: lab_spec.json, metrics.jsonl (the
trainer's per-batch `drift/*`, `is/*`), ratios.jsonl (the probe: fixed training pairs scored at every
checkpoint), the evaluator's records (golden win rate, pi_ref at step 0; the sampled KL from pi_ref of
every checkpoint), summary.json. Its tables (returned; the report writes them as csv/<name>.csv):
drift_signals (which signal each run logged), drift_leadlag (every run x signal x threshold: alarm step,
golden peak and decline, leads), drift_thresholds (the same aggregated), drift_selection and
drift_heldout (the honest evaluation); figures/drift_<regime>.png.

Signals: the engine's (`isdaa.drift.SIGNALS`: trainer-side batch signals and the lab's probe) and
`sample/kl`, the k1 estimate of KL(pi_theta || pi_ref) from the evaluator's T=1 samples at every
checkpoint: golden-free, but measured only where the lab evaluates. The alarm is `DriftRule` with patience
1 and a trailing mean over ANALYSIS_SMOOTHING checks (10 batch records for training signals; 1 for the
checkpoint signals). Golden peak = first maximum of the win rate over the checkpoints (step 0
included), smoothed over GOLDEN_WINDOW (3) neighbouring checkpoints first; decline = first later
checkpoint at least `drop` (the preset's overopt_drop, 0.05) below the peak on that smoothed curve. An
alarm "leads" when it fires at or before the decline step.

Held-out evaluation: DPO and IS-DPO runs of the main group. For each signal, the threshold (or "never
stop") that maximizes the mean golden win rate of the policy at the alarm step is chosen on the
selection seeds (`drift.split_seeds`: the lowest of 3); the other seeds report: final win rate
without the rule, with it (the policy at the alarm step, interpolated between evaluated checkpoints)
and the oracle (the best evaluated checkpoint by golden win rate, an optimistic bound: the max of
noisy estimates).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from isdaa import drift
from isdaa.lab import rundir
from isdaa.lab.markdown import Section, Table, dashes, table

# The engine's signals plus the sampled KL (source "eval": the evaluator's records)
SIGNALS: dict[str, drift.Signal] = {**drift.SIGNALS, "sample/kl": drift.Signal(
    "sample/kl", "eval", "kl_k1", "above", 0.0, math.inf)}
THRESHOLDS: dict[str, tuple[float, ...]] = {
    **drift.THRESHOLDS, "sample/kl": (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)}
ANALYSIS_SMOOTHING = {"train": 10, "probe": 1, "eval": 1}
GOLDEN_WINDOW = 3  # the golden curve is smoothed over 3 checkpoints before its peak and decline are read
HELDOUT_METHODS = ("dpo", "is-dpo")


@dataclass
class RunData:
    spec: dict
    total_steps: int
    golden_steps: list[int]
    golden_wr: list[float]
    signals: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)

    def __getattr__(self, name):  # run_id, label, method, beta, seed, group, lr, optimizer
        try:
            return self.__dict__["spec"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def regime(self) -> str:
        """group, optimizer, lr, beta, and the run's own pairs / schedule when the preset sets them."""
        extra = [f"{self.spec[k]}{unit}" for k, unit in (("n_pairs", " pairs"), ("scheduler", ""),
                                                         ("warmup_ratio", " warmup")) if self.spec.get(k) is not None]
        return ", ".join([self.group, f"{self.optimizer} lr {self.lr:g}", f"beta {self.beta:g}", *extra])


# ---------------------------------------------------------------------------------------------------
# Reading a lab folder


def load_run(run_dir: Path, spec: dict | None = None) -> RunData:
    spec = spec if spec is not None else rundir.spec(run_dir)
    total = rundir.total_steps(run_dir)
    if total is None:
        raise FileNotFoundError(f"{run_dir / 'summary.json'}: missing or without total_steps (a finished run has it)")
    evals = rundir.evals(run_dir)
    if not evals:
        raise ValueError(f"{run_dir / 'eval'}: no evaluated checkpoint")
    run = RunData(spec, total, [e["_step"] for e in evals], [float(e["win_rate"]) for e in evals])
    sources = {"train": (rundir.metrics(run_dir), run_dir / "metrics.jsonl"),
               "probe": (rundir.ratios(run_dir), run_dir / "ratios.jsonl")}
    for name, sig in SIGNALS.items():
        if sig.source == "eval":  # the checkpoints' sampled KL (pi_ref itself at step 0 has none)
            pts = [(e["_step"], float(e[sig.key])) for e in evals if e["_step"] > 0 and e.get(sig.key) is not None]
            steps, values = [p[0] for p in pts], [p[1] for p in pts]
        else:
            rows, where = sources[sig.source]
            steps, values = drift.series(rows, name, where=str(where))
        if steps:
            run.signals[name] = (steps, values)
    return run


def load_runs(root: str | Path, specs: dict[str, dict] | None = None) -> list[RunData]:
    """The finished runs a report covers (`rundir.finished_runs`)."""
    return [load_run(run_dir, spec) for run_dir, spec in rundir.finished_runs(Path(root), specs)]


def _drop(root: Path) -> float:
    lab = root / "lab.json"
    return float(rundir.read_json(lab)["preset"].get("overopt_drop", 0.05)) if lab.exists() else 0.05


def signal_rows(runs: list[RunData]) -> list[dict]:
    """Which signals each run logged (and how many checks): every signal should be logged on every seed,
    or a threshold chosen on some seeds is applied to runs that cannot fire it."""
    return [{"run_id": r.run_id, "method": r.method, "seed": r.seed,
             **{s: len(r.signals[s][0]) if s in r.signals else 0 for s in SIGNALS}} for r in runs]


# ---------------------------------------------------------------------------------------------------
# Lead / lag


def _alarm(run: RunData, signal: str, threshold: float | None) -> tuple[int | None, float, bool]:
    """(alarm step, smoothed value there, constant series) for one run; threshold None: never."""
    if signal not in run.signals:
        return None, math.nan, True
    steps, values = run.signals[signal]
    sig = SIGNALS[signal]
    if drift.is_constant(values):
        return None, math.nan, True
    if threshold is None:
        return None, math.nan, False
    step, smoothed = drift.alarm_step(steps, values, threshold, sig.direction, ANALYSIS_SMOOTHING[sig.source])
    return step, smoothed, False


def leadlag_rows(runs: list[RunData], drop: float) -> list[dict]:
    """One row per run x signal x candidate threshold."""
    out = []
    for run in runs:
        ev = drift.golden_events(run.golden_steps, run.golden_wr, drop, GOLDEN_WINDOW)
        base = {k: run.spec.get(k) for k in ("run_id", "label", "method", "group", "beta", "lr", "optimizer", "seed")}
        base.update(regime=run.regime, total_steps=run.total_steps, peak_step=ev.peak_step,
                    peak_win_rate=ev.peak_win_rate, decline_step=ev.decline_step, final_win_rate=ev.final_win_rate,
                    oracle_win_rate=max(run.golden_wr))
        for signal, thresholds in THRESHOLDS.items():
            for th in thresholds:
                step, smoothed, constant = _alarm(run, signal, th)
                out.append({**base, "signal": signal, "threshold": th,
                            "smoothing": ANALYSIS_SMOOTHING[SIGNALS[signal].source], "constant": constant,
                            "alarm_step": step,
                            "alarm_fraction": step / run.total_steps if step and run.total_steps else None,
                            "smoothed_at_alarm": smoothed if step is not None else None,
                            "lead_peak": drift.lead(step, ev.peak_step),
                            "lead_decline": drift.lead(step, ev.decline_step),
                            "win_rate_at_alarm": drift.win_rate_at(step, run.golden_steps, run.golden_wr)})
    return out


def threshold_rows(leadlag: list[dict]) -> list[dict]:
    """Per signal x threshold over the runs where the signal varies: of the runs whose golden win rate
    declined, how many alarms came at or before the decline (early), after it (late), never (missed);
    of the others, how many alarms fired at all (false alarms); the median lead over early alarms."""
    by = defaultdict(list)
    for r in leadlag:
        if not r["constant"]:
            by[(r["signal"], r["threshold"])].append(r)
    out = []
    for (signal, th), rows in by.items():
        declined = [r for r in rows if r["decline_step"] is not None]
        early = [r for r in declined if r["alarm_step"] is not None and r["lead_decline"] >= 0]
        late = [r for r in declined if r["alarm_step"] is not None and r["lead_decline"] < 0]
        flat = [r for r in rows if r["decline_step"] is None]
        leads = [r["lead_decline"] / r["total_steps"] for r in early if r["total_steps"]]
        peak_leads = [r["lead_peak"] / r["total_steps"] for r in declined
                      if r["lead_peak"] is not None and r["total_steps"]]
        out.append({"signal": signal, "threshold": th, "runs": len(rows), "declined": len(declined),
                    "early": len(early), "late": len(late), "missed": len(declined) - len(early) - len(late),
                    "no_decline": len(flat), "false_alarms": sum(r["alarm_step"] is not None for r in flat),
                    "median_lead_fraction": statistics.median(leads) if leads else None,
                    "before_peak": sum(r["lead_peak"] is not None and r["lead_peak"] >= 0 for r in declined),
                    "median_lead_peak_fraction": statistics.median(peak_leads) if peak_leads else None,
                    "gain_in_sample": statistics.fmean(r["win_rate_at_alarm"] - r["final_win_rate"] for r in rows)})
    return out


def _best_per_signal(trows: list[dict]) -> dict[str, dict]:
    """The descriptive best threshold of each signal: most early alarms minus late, missed and false
    ones (in-sample; the held-out evaluation below is the honest number)."""
    best = {}
    for r in trows:
        score = r["early"] - r["late"] - r["missed"] - r["false_alarms"]
        if r["signal"] not in best or score > best[r["signal"]][0]:
            best[r["signal"]] = (score, r)
    return {k: v[1] for k, v in best.items()}


def predicts(row: dict) -> bool:
    """A signal at a threshold "predicts the decline" when it fires at or before the decline in at least
    2/3 of the runs that declined, and in at most 1/3 of the runs that did not."""
    ok = row["declined"] > 0 and row["early"] >= 2 / 3 * row["declined"]
    return ok and row["false_alarms"] <= row["no_decline"] / 3


# ---------------------------------------------------------------------------------------------------
# Held-out evaluation


def heldout(runs: list[RunData]) -> tuple[list[dict], list[dict], str | None]:
    """(selection rows, held-out rows, why not) for the DPO / IS-DPO runs without loss options: one
    threshold per signal for all of them, reported per regime (group, optimizer, lr, beta) and method."""
    pool = [r for r in runs if r.method in HELDOUT_METHODS and not r.spec.get("options") and not r.spec.get("config")]
    select_seeds, hold_seeds = drift.split_seeds(r.seed for r in pool)
    if not hold_seeds:
        return [], [], (f"The held-out evaluation needs at least 2 seeds of {'/'.join(HELDOUT_METHODS)} runs; "
                        f"this folder has seeds {sorted({r.seed for r in pool})}")
    select = [r for r in pool if r.seed in select_seeds]
    hold = [r for r in pool if r.seed in hold_seeds]
    sel_rows, held_rows = [], []
    for signal, thresholds in THRESHOLDS.items():
        if any(signal not in r.signals for r in pool):  # not logged on every seed: no honest choice
            continue
        scored = [(th, _mean_wr(select, signal, th)) for th in (None, *thresholds)]
        best_th, best = scored[0]
        for th, score in scored[1:]:  # ties keep the earlier: "never stop", then the more lenient
            if score > best + 1e-12:
                best_th, best = th, score
        sel_rows.append({"signal": signal, "threshold": best_th, "selection_seeds": " ".join(map(str, select_seeds)),
                         "selection_rule_win_rate": best, "selection_no_stop_win_rate": scored[0][1]})
        for (regime, method), group in sorted(_groups(hold).items()):
            alarms = [_alarm(r, signal, best_th)[0] for r in group]
            with_rule = [drift.win_rate_at(a, r.golden_steps, r.golden_wr) for a, r in zip(alarms, group)]
            none = [r.golden_wr[-1] for r in group]
            held_rows.append({
                "signal": signal, "threshold": best_th, "regime": regime, "method": method,
                "beta": group[0].beta, "lr": group[0].lr, "optimizer": group[0].optimizer,
                "heldout_seeds": " ".join(str(r.seed) for r in group), "n": len(group),
                "no_stop": statistics.fmean(none), "rule": statistics.fmean(with_rule),
                "oracle": statistics.fmean(max(r.golden_wr) for r in group),
                "delta": statistics.fmean(w - n for w, n in zip(with_rule, none)),
                "fired": sum(a is not None for a in alarms),
                "alarm_fraction": _mean_or_none([a / r.total_steps for a, r in zip(alarms, group)
                                                 if a is not None and r.total_steps])})
    return sel_rows, held_rows, None


def _mean_wr(runs, signal, th) -> float:
    return statistics.fmean(drift.win_rate_at(_alarm(r, signal, th)[0], r.golden_steps, r.golden_wr) for r in runs)


def _groups(runs):
    out = defaultdict(list)
    for r in runs:
        out[(r.regime, r.method)].append(r)
    return out


def _mean_or_none(xs):
    return statistics.fmean(xs) if xs else None


# ---------------------------------------------------------------------------------------------------
# Figures: one per regime (group, optimizer, lr, beta)


def fig_regime(runs: list[RunData], chosen: dict, drop: float, path: Path) -> Path:
    """Columns: methods of the regime. Rows: golden win rate (peak o, decline x), the batch log-ratio
    (trailing mean, line) with the probe's (dots), the batch ESS with the probe's. Dotted verticals: the
    alarm of the held-out-selected threshold of drift/log_ratio_mean (or the descriptive best)."""
    from isdaa.lab.figures import pyplot, save
    from isdaa.plots import method_colors

    plt = pyplot()
    labels = sorted({r.label for r in runs})
    colors = method_colors(labels)
    fig, axes = plt.subplots(3, len(labels), figsize=(3.6 * len(labels), 7.5), squeeze=False, sharex="col")
    rule_signal = "drift/log_ratio_mean"
    th = chosen.get(rule_signal)
    for col, label in enumerate(labels):
        for run in (r for r in runs if r.label == label):
            c = colors[label]
            ev = drift.golden_events(run.golden_steps, run.golden_wr, drop, GOLDEN_WINDOW)
            ax = axes[0][col]
            ax.plot(run.golden_steps, run.golden_wr, color=c, lw=1, marker=".", ms=3)
            ax.plot([ev.peak_step], [ev.peak_win_rate], "o", color=c, ms=5)  # smoothed peak
            if ev.decline_step is not None:
                ax.plot([ev.decline_step], [ev.peak_win_rate - drop], "x", color=c)
            for row, (train, probe) in ((1, ("drift/log_ratio_mean", "probe/log_ratio_mean")),
                                        (2, ("is/ess", "probe/ess"))):
                ax = axes[row][col]
                if train in run.signals and not drift.is_constant(run.signals[train][1]):
                    steps, values = run.signals[train]
                    ax.plot(steps, _trailing(values, ANALYSIS_SMOOTHING["train"]), color=c, lw=0.8)
                if probe in run.signals:
                    ax.plot(*run.signals[probe], ".", color=c, ms=5)
            alarm = _alarm(run, rule_signal, th)[0] if th is not None else None
            if alarm is not None:
                for row in range(3):
                    axes[row][col].axvline(alarm, color=c, ls=":", lw=0.8)
        axes[0][col].set_title(label, fontsize=9)
        axes[2][col].set_xlabel("step")
    for row, name in enumerate(("golden win rate", "log ratio pi_theta/pi_b\n(batch: line, probe: dots)",
                                "ESS (batch: line, probe: dots)")):
        axes[row][0].set_ylabel(name, fontsize=8)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    th_text = f"{rule_signal} < {th:g}" if th is not None else "no threshold chosen"
    fig.suptitle(f"{runs[0].regime}: seeds as lines; dotted: alarm ({th_text})", fontsize=10)
    return save(fig, path)


def _trailing(values, k):
    """The smoothed value the alarm sees at each check: DriftRule's own trailing mean (never firing)."""
    rule, out = drift.DriftRule(-math.inf, "below", smoothing=k), []
    for v in values:
        rule.update(v)
        out.append(rule.smoothed)
    return out


# ---------------------------------------------------------------------------------------------------
# The report section


def drift_section(lab_root: str | Path, specs: dict[str, dict] | None = None) -> Section:
    """The drift analysis of a lab folder (the runs of `specs`, see `rundir.finished_runs`) as a report
    section: markdown, figures (drawn into figures/), tables drift_signals, drift_leadlag,
    drift_thresholds, drift_selection, drift_heldout."""
    root = Path(lab_root)
    runs = load_runs(root, specs)
    if not runs:
        return Section("## Golden-free drift alarm\n\nNo finished runs.\n")
    drop = _drop(root)
    leadlag = leadlag_rows(runs, drop)
    trows = threshold_rows(leadlag)
    sel, held, why_not = heldout(runs)
    tables = {name: Table(rows) for name, rows in (
        ("drift_signals", signal_rows(runs)), ("drift_leadlag", leadlag), ("drift_thresholds", trows),
        ("drift_selection", sel), ("drift_heldout", held))}
    chosen = {r["signal"]: r["threshold"] for r in sel}
    if chosen.get("drift/log_ratio_mean") is None:  # no held-out choice: draw the descriptive best
        best = _best_per_signal(trows).get("drift/log_ratio_mean")
        chosen["drift/log_ratio_mean"] = best["threshold"] if best else None
    figures = []
    for old in (root / "figures").glob("drift_*.png"):  # a previous report's, whose regimes may differ
        old.unlink()
    by_regime = defaultdict(list)
    for r in runs:
        by_regime[r.regime].append(r)
    for regime, rs in sorted(by_regime.items()):
        slug = re.sub(r"[^A-Za-z0-9.]+", "_", regime).strip("_")
        figures.append(fig_regime(rs, chosen, drop, root / "figures" / f"drift_{slug}.png"))
    md = _markdown(runs, drop, trows, leadlag, sel, held, why_not, figures, root)
    return Section(md, figures, tables)


def _markdown(runs, drop, trows, leadlag, sel, held, why_not, figures, root) -> str:
    n_declined = sum(drift.golden_events(r.golden_steps, r.golden_wr, drop, GOLDEN_WINDOW).decline_step is not None
                     for r in runs)
    best = _best_per_signal(trows)
    lines = ["## Golden-free drift alarm", "",
             f"Can a signal that needs no golden reward announce over-optimization? {len(runs)} runs; "
             f"{n_declined} of them have a golden win rate that fell by >= {drop:g} from its peak (a decline; the "
             f"curve smoothed over {GOLDEN_WINDOW} checkpoints). "
             f"Alarm: trailing mean over {ANALYSIS_SMOOTHING['train']} batch records (probe: raw, at checkpoints), "
             "patience 1. Early = the alarm fires at or before the decline step. is/* batch signals are constant "
             "for methods without importance weights and are left out for them.", ""]
    lines += _findings(best, n_declined)
    cols = [("signal", "signal", ""), ("threshold", "threshold", "3"), ("runs", "runs", ""),
            ("declined", "declined", ""), ("early", "early", ""), ("late", "late", ""), ("missed", "missed", ""),
            ("false_alarms", "alarms w/o decline", ""), ("median_lead_fraction", "median lead (of training)", "2"),
            ("before_peak", "at/before peak", ""), ("median_lead_peak_fraction", "median lead on peak", "2"),
            ("gain_in_sample", "WR at alarm - final", "3")]
    lines += ["", "### Lead / lag, each signal at its best threshold (in-sample; all thresholds: "
              "csv/drift_thresholds.csv, every run: csv/drift_leadlag.csv)", "",
              table(dashes([best[s] for s in SIGNALS if s in best]), cols)]
    lines += ["### Per regime (each signal at the threshold above)", "", _regime_table(leadlag, best), ""]
    lines += ["### Held-out evaluation: final golden win rate without the rule, with it, and the oracle", ""]
    if why_not:
        lines += [why_not + ".", ""]
    else:
        lines += _heldout_md(sel, held)
    lines += ["", "Figures: " + ", ".join(f"`{p.relative_to(root)}`" for p in figures), ""]
    return "\n".join(lines)


def _findings(best: dict, n_declined: int) -> list[str]:
    if n_declined == 0:
        return ["No run declined: these runs cannot tell whether any signal predicts over-optimization; "
                "`stop_on_drift` ships as an option with that caveat."]
    out = []
    for s, r in sorted(best.items(), key=lambda kv: list(SIGNALS).index(kv[0])):
        verdict = "predicts the decline" if predicts(r) else "does not predict the decline"
        lead = _lead_text(r["median_lead_fraction"])
        out.append(f"- {s} {'<' if SIGNALS[s].direction == 'below' else '>'} {r['threshold']:g}: {verdict} "
                   f"(early in {r['early']}/{r['declined']} declines{lead}, late {r['late']}, missed {r['missed']}; "
                   f"alarms in {r['false_alarms']}/{r['no_decline']} runs without a decline).")
    if not any(predicts(r) for r in best.values()):
        out.append("- No signal predicts the decline here; `stop_on_drift` ships as an option with that caveat.")
    return out


def _lead_text(x):
    return "" if x is None else f", median lead {x:.2f} of training"


def _regime_table(leadlag, best) -> str:
    cells = defaultdict(lambda: [0, 0])  # (regime, signal) -> [early, declined]
    for r in leadlag:
        b = best.get(r["signal"])
        if r["constant"] or b is None or r["threshold"] != b["threshold"] or r["decline_step"] is None:
            continue
        c = cells[(r["regime"], r["signal"])]
        c[1] += 1
        c[0] += r["alarm_step"] is not None and r["lead_decline"] >= 0
    regimes = sorted({k[0] for k in cells})
    if not regimes:
        return "No run declined in any regime."
    signals = [s for s in SIGNALS if any((g, s) in cells for g in regimes)]
    rows = [{"regime": g, **{s: (f"{cells[(g, s)][0]}/{cells[(g, s)][1]}" if (g, s) in cells else "-")
                             for s in signals}} for g in regimes]
    return "Early alarms / declined runs:\n\n" + table(rows, [("regime", "regime", "")] + [(s, s, "") for s in signals])


def _heldout_md(sel, held) -> list[str]:
    out = ["Thresholds chosen on seeds " + (sel[0]["selection_seeds"] if sel else "?")
           + " (maximizing the mean golden win rate at the alarm; 'never' = no stopping wins), reported on the "
           "other seeds. Win rate with the rule = the policy at the alarm step (interpolated between evaluated "
           "checkpoints); oracle = best evaluated checkpoint by golden win rate.", ""]
    agg = []
    for s in sel:
        rows = [h for h in held if h["signal"] == s["signal"]]
        n = sum(h["n"] for h in rows) or 1
        agg.append({"signal": s["signal"], "threshold": "never" if s["threshold"] is None else f"{s['threshold']:g}",
                    "no_stop": sum(h["no_stop"] * h["n"] for h in rows) / n,
                    "rule": sum(h["rule"] * h["n"] for h in rows) / n,
                    "oracle": sum(h["oracle"] * h["n"] for h in rows) / n,
                    "beats": sum(h["delta"] > 0 for h in rows), "loses": sum(h["delta"] < 0 for h in rows),
                    "conditions": len(rows), "fired": f"{sum(h['fired'] for h in rows)}/{n}"})
    out.append(table(dashes(agg), [("signal", "signal", ""), ("threshold", "chosen threshold", ""),
                            ("no_stop", "no stop", "3"), ("rule", "rule", "3"), ("oracle", "oracle", "3"),
                            ("beats", "conditions rule > no stop", ""), ("loses", "rule < no stop", ""),
                            ("conditions", "conditions", ""), ("fired", "fired", "")]))
    gain = {s["signal"]: s["selection_rule_win_rate"] - s["selection_no_stop_win_rate"] for s in sel}
    trainable = [a for a in agg if SIGNALS[a["signal"]].source == "train"]
    if trainable:  # the headline signal is chosen on the selection seeds too, never on the held-out ones
        top = max(trainable, key=lambda a: gain[a["signal"]])
        rows = [h for h in held if h["signal"] == top["signal"]]
        out += ["", f"Per regime and method, {top['signal']} (the trainer-side signal with the largest gain on "
                "the selection seeds):", "",
                table(dashes(rows), [("regime", "regime", ""), ("method", "method", ""), ("heldout_seeds", "seeds", ""),
                              ("no_stop", "no stop", "3"), ("rule", "rule", "3"), ("oracle", "oracle", "3"),
                              ("delta", "rule - no stop", "3"), ("fired", "fired", ""),
                              ("alarm_fraction", "alarm at (of training)", "2")])]
        if top["rule"] - top["no_stop"] <= 0:
            out.append("No trainer-side rule beats 'no stopping' on the held-out seeds.")
        elif top["threshold"] != "never":
            out += ["", "The same rule in the trainer (the lab logs every step): `stop_on_drift: {signal: "
                    f"{top['signal']}, threshold: {top['threshold']}, smoothing: {ANALYSIS_SMOOTHING['train']}, "
                    "patience: 1, every: 1}`."]
    return out
