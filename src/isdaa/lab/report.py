"""The lab's report: DIR/report.md, figures/*.png (drawn by isdaa.lab.figures), csv/*.csv, all from the
saved results.

Reads only files (lab.json, runs/*/eval/*.json, runs/*/ratios.jsonl, runs/*/eval/samples/*.jsonl);
never imports the trainer. Every number in report.md is also in a CSV; the "findings" are generated
from those numbers with the thresholds stated in the text (nothing hand-written, nothing tuned).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from isdaa.io import atomic_write_csv, atomic_write_json, atomic_write_text, read_jsonl
from isdaa.lab import task

POINT_FIELDS = [
    "run_id", "method", "label", "group", "beta", "seed", "lr", "optimizer", "options",
    "step", "total_steps", "fraction", "examples_seen",
    "win_rate", "win_rate_se", "tie_rate", "reward_policy", "reward_chosen",
    "kl_k1", "kl_k3", "sqrt_kl", "sqrt_kl_k3", "kl_l_median", "mean_length", "finished_frac",
    "coverage", "hallucinated", "repeated", "beyond", "no_eos", "length_words",
    "log_ratio_mean", "ratio_mean_log", "weight_mean", "ess", "clip_frac", "logps_chosen", "logps_rejected",
]
SUMMARY_FIELDS = [
    "group", "label", "beta", "lr", "optimizer", "n_seeds", "ref_win_rate",
    "peak_win_rate", "peak_sqrt_kl", "peak_fraction", "final_win_rate", "final_win_rate_std",
    "final_win_rate_se", "final_kl", "final_sqrt_kl", "drop", "over_optimized",
]


# ---------------------------------------------------------------------------------------------------
# Collecting points


def _eval_prompts(root: Path) -> list[str]:
    return [r["prompt"] for r in read_jsonl(root / "data" / "golden_eval" / "pairs.jsonl")]


def _components(samples_path: Path, prompts: list[str]) -> dict:
    if not samples_path.exists():
        return {}
    recs = read_jsonl(samples_path)
    comps = task.mean_components([prompts[r["prompt_idx"]] for r in recs], [r["response"] for r in recs])
    comps["length_words"] = comps.pop("length")
    comps.pop("reward", None)
    return comps


def collect_points(root: str | Path) -> list[dict]:
    """One row per (finished run, evaluated checkpoint), plus the reference policy at fraction 0."""
    root = Path(root)
    prompts = _eval_prompts(root)
    rows = []
    for done in sorted(root.glob("runs/*/lab_done.json")):
        run_dir = done.parent
        spec = json.loads((run_dir / "lab_spec.json").read_text())
        ratios = {r["step"]: r for r in read_jsonl(run_dir / "ratios.jsonl")} if (run_dir / "ratios.jsonl").exists() else {}
        base = {k: spec[k] for k in ("run_id", "method", "label", "group", "beta", "seed", "lr", "optimizer")}
        base["options"] = json.dumps(spec["options"], sort_keys=True)
        evals = []
        for path in (run_dir / "eval").glob("*.json"):
            if path.name == "reference.json" or path.name.startswith("step-"):
                evals.append(json.loads(path.read_text()))
        total = None
        for e in evals:
            if e.get("checkpoint"):
                st = json.loads((Path(e["checkpoint"]) / "trainer_state.json").read_text())
                total = st.get("total_steps") or total
        for e in evals:
            is_ref = e.get("name") == "reference"
            step = 0 if is_ref else int(e["step"])
            row = dict(base, step=step, total_steps=total, fraction=(step / total) if total else None,
                       examples_seen=0 if is_ref else e.get("examples_seen"),
                       win_rate=e["win_rate"], win_rate_se=e["win_rate_se"], tie_rate=e["tie_rate"],
                       reward_policy=e["reward_policy"], reward_chosen=e["reward_chosen"],
                       kl_k1=e["kl_k1"], kl_k3=e["kl_k3"], sqrt_kl=math.sqrt(max(e["kl_k1"], 0.0)),
                       sqrt_kl_k3=math.sqrt(max(e["kl_k3"], 0.0)), kl_l_median=e["kl"]["l_median"],
                       mean_length=e["mean_length"], finished_frac=e["finished_frac"])
            name = "reference" if is_ref else e["name"]
            row.update(_components(run_dir / "eval" / "samples" / f"{name}.jsonl", prompts))
            rat = ratios.get(step, {})
            row.update({k: rat.get(k) for k in ("log_ratio_mean", "weight_mean", "ess", "clip_frac",
                                                "logps_chosen", "logps_rejected")})
            row["ratio_mean_log"] = rat.get("ratio_mean_log")
            rows.append(row)
    rows.sort(key=lambda r: (r["group"], r["label"], r["beta"], r["lr"], r["optimizer"], r["seed"], r["step"]))
    return rows


TRAIN_FIELDS = ["run_id", "label", "group", "beta", "seed", "lr", "optimizer", "step", "fraction", "loss",
                "is/weight_mean", "is/ess", "is/clip_frac", "rewards/margins", "logps/chosen", "logps/rejected",
                "drift/log_ratio_mean", "grad_norm"]


def collect_train_metrics(root: str | Path) -> list[dict]:
    """The trainer's per-step records (metrics.jsonl) of every finished run, the fields of TRAIN_FIELDS."""
    rows = []
    for done in sorted(Path(root).glob("runs/*/lab_done.json")):
        run_dir = done.parent
        spec = json.loads((run_dir / "lab_spec.json").read_text())
        total = json.loads((run_dir / "summary.json").read_text()).get("total_steps") or 1
        for rec in read_jsonl(run_dir / "metrics.jsonl", tolerate_partial_tail=True):
            if "loss" not in rec:
                continue
            rows.append({**{k: spec[k] for k in ("run_id", "label", "group", "beta", "seed", "lr", "optimizer")},
                         "fraction": rec["step"] / total, **{k: rec.get(k) for k in TRAIN_FIELDS[7:] if k != "fraction"}})
    return rows


# ---------------------------------------------------------------------------------------------------
# Aggregation (pure functions of the points)


def _key(r) -> tuple:
    return (r["group"], r["label"], r["beta"], r["lr"], r["optimizer"])


def curves(points: list[dict], field: str) -> dict:
    """{condition key: (fractions (F,), mean (F,), se over seeds (F,), n_seeds)} for `field`."""
    by = defaultdict(lambda: defaultdict(list))
    for r in points:
        if r[field] is not None and r["fraction"] is not None:
            by[_key(r)][round(r["fraction"], 6)].append(r[field])
    out = {}
    for k, per_f in by.items():
        fr = np.array(sorted(per_f))
        vals = [np.asarray(per_f[f], dtype=float) for f in fr]
        mean = np.array([v.mean() for v in vals])
        se = np.array([v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0 for v in vals])
        out[k] = (fr, mean, se, max(len(v) for v in vals))
    return out


def summarize(points: list[dict], drop_threshold: float) -> list[dict]:
    """Table 1 analog, one row per condition (method label, beta, lr, optimizer); over seeds:
    the peak of the MEAN win-rate curve and its sqrt KL; final = last checkpoint (mean, std, se)."""
    by_run = defaultdict(list)
    for r in points:
        by_run[r["run_id"]].append(r)
    finals = defaultdict(list)
    refs = defaultdict(list)
    for rows in by_run.values():
        rows.sort(key=lambda r: r["step"])
        finals[_key(rows[-1])].append(rows[-1])
        refs[_key(rows[0])].append(rows[0]["win_rate"] if rows[0]["step"] == 0 else float("nan"))
    wr, kl = curves(points, "win_rate"), curves(points, "sqrt_kl")
    out = []
    for k, (fr, mean, _se, _n) in wr.items():
        i = int(np.argmax(mean))
        f_rows = finals[k]
        f_wr = np.array([r["win_rate"] for r in f_rows])
        n = len(f_rows)
        final_se = f_wr.std(ddof=1) / np.sqrt(n) if n > 1 else f_rows[0]["win_rate_se"]
        drop = float(mean[i] - f_wr.mean())
        out.append({
            "group": k[0], "label": k[1], "beta": k[2], "lr": k[3], "optimizer": k[4], "n_seeds": n,
            "ref_win_rate": float(np.nanmean(refs[k])),
            "peak_win_rate": float(mean[i]), "peak_sqrt_kl": float(kl[k][1][i]), "peak_fraction": float(fr[i]),
            "final_win_rate": float(f_wr.mean()),
            "final_win_rate_std": float(f_wr.std(ddof=1)) if n > 1 else float("nan"),
            "final_win_rate_se": float(final_se),
            "final_kl": float(np.mean([r["kl_k1"] for r in f_rows])),
            "final_sqrt_kl": float(np.mean([r["sqrt_kl"] for r in f_rows])),
            "drop": drop, "over_optimized": bool(drop > drop_threshold),
        })
    out.sort(key=lambda r: (r["group"], r["optimizer"], r["lr"], r["beta"], r["label"]))
    return out


# ---------------------------------------------------------------------------------------------------
# Findings (generated text)


def _fmt(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _base_of(label: str) -> str | None:
    """is-dpo -> dpo; is-dpo[self-norm] -> dpo; non-IS labels -> None."""
    return label[3:].split("[")[0] if label.startswith("is-") else None


def findings(summary: list[dict], points: list[dict], drop_threshold: float) -> list[str]:
    lines: list[str] = []
    main = [s for s in summary if s["group"] == "main"]
    if main:
        ref = np.nanmean([s["ref_win_rate"] for s in main])
        lines.append(f"pi_ref's golden win rate against the chosen responses: {_fmt(ref)}.")
        over = [s for s in main if s["over_optimized"]]
        kept = [s for s in main if not s["over_optimized"]]
        if over:
            lines.append(
                f"Over-optimized (peak minus final win rate > {drop_threshold}): "
                + ", ".join(f"{s['label']} (beta {s['beta']:g}: peak {_fmt(s['peak_win_rate'])} at sqrt KL "
                            f"{_fmt(s['peak_sqrt_kl'], 2)}, final {_fmt(s['final_win_rate'])})" for s in over) + "."
            )
        if kept:
            lines.append("Did not over-optimize by that criterion: "
                         + ", ".join(f"{s['label']} (beta {s['beta']:g}, drop {_fmt(s['drop'])})" for s in kept) + ".")
        for beta in sorted({s["beta"] for s in main}):
            at = sorted((s for s in main if s["beta"] == beta), key=lambda s: s["final_kl"])
            lines.append(f"beta {beta:g}: final KL (k1) from lowest to highest: "
                         + ", ".join(f"{s['label']} {_fmt(s['final_kl'], 2)}" for s in at)
                         + f"; best final win rate: {max(at, key=lambda s: s['final_win_rate'])['label']}.")
    lines += is_comparisons(summary)
    lines += mechanism(summary, points)
    lines += clip_findings(summary)
    lines += regime_findings(summary)
    return lines


def _se_diff(a: dict, b: dict) -> float:
    return math.sqrt(a["final_win_rate_se"] ** 2 + b["final_win_rate_se"] ** 2)


def is_comparisons(summary: list[dict]) -> list[str]:
    """IS-<m> (any IS option) vs <m> at equal (beta, lr, optimizer), outside the clip ablation: final and
    peak win rate, final KL. "helped"/"hurt" when the final win rates differ by more than 2 standard
    errors (over seeds; with one seed, the evaluation's over prompts)."""
    idx = {(s["label"], s["beta"], s["lr"], s["optimizer"]): s for s in summary if s["group"] != "clip"}
    lines = []
    lr_main = {s["lr"] for s in summary if s["group"] == "main"}
    for (label, beta, lr, opt), s in sorted(idx.items(), key=lambda kv: (kv[0][3], kv[0][2], kv[0][1], kv[0][0])):
        base = _base_of(label)
        b = idx.get((base, beta, lr, opt)) if base else None
        if b is None:
            continue
        d, se = s["final_win_rate"] - b["final_win_rate"], _se_diff(s, b)
        verdict = ("helped" if d > 2 * se else "hurt" if d < -2 * se else "made no clear difference (|diff| <= 2 se)")
        where = f"beta {beta:g}" + ("" if lr in lr_main and opt == "adamw" and len(lr_main) == 1 else f", {opt} lr {lr:g}")
        lines.append(
            f"IS {verdict} for {label} vs {base} ({where}): final win rate {_fmt(s['final_win_rate'])} vs "
            f"{_fmt(b['final_win_rate'])} (diff {d:+.3f}, 2 se = {2 * se:.3f}); peak {_fmt(s['peak_win_rate'])} "
            f"vs {_fmt(b['peak_win_rate'])}; final KL {_fmt(s['final_kl'], 2)} vs {_fmt(b['final_kl'], 2)}."
        )
    return lines


def mechanism(summary: list[dict], points: list[dict]) -> list[str]:
    """How the over-optimized runs lost reward: the golden reward's components at the peak vs the end."""
    lines = []
    comps = ("coverage", "repeated", "hallucinated", "length_words", "no_eos")
    for s in summary:
        if not s["over_optimized"] or s["group"] != "main":
            continue
        k = (s["group"], s["label"], s["beta"], s["lr"], s["optimizer"])
        rows = [r for r in points if _key(r) == k]
        at_peak = [r for r in rows if abs(r["fraction"] - s["peak_fraction"]) < 1e-6]
        at_end = [r for r in rows if abs(r["fraction"] - max(x["fraction"] for x in rows)) < 1e-6]
        if not at_peak or not at_end or at_peak[0].get("coverage") is None:
            continue
        parts = [f"{c} {np.mean([r[c] for r in at_peak]):.2f} -> {np.mean([r[c] for r in at_end]):.2f}" for c in comps]
        lines.append(f"{s['label']} (beta {s['beta']:g}), peak -> final: " + ", ".join(parts) + ".")
    return lines


def clip_findings(summary: list[dict]) -> list[str]:
    clip = _clip_table(summary)
    if len(clip) < 2:
        return []
    return ["Clip ablation (is-dpo): " + "; ".join(
        f"eps {e:g}: final win rate {_fmt(s['final_win_rate'])}, final KL {_fmt(s['final_kl'], 2)}"
        for e, s in clip) + "."]


def _clip_table(summary):
    """[(eps, summary row)] for the clip ablation, eps=1 taken from the main grid's is-dpo."""
    out = []
    for s in summary:
        if s["group"] == "clip":
            out.append((float(s["label"].split("eps=")[1].rstrip("]")), s))
    if out:
        beta = out[0][1]["beta"]
        for s in summary:
            if s["group"] == "main" and s["label"] == "is-dpo" and s["beta"] == beta:
                out.append((1.0, s))
    return sorted(out, key=lambda t: t[0])


def _regime_rows(summary: list[dict]) -> list[dict]:
    """The regimes comparison: its own runs plus identical conditions run under another preset (e.g. the
    main grid's DPO / IS-DPO at the same beta and learning rate; runs are shared across presets)."""
    reg = [s for s in summary if s["group"] == "regimes"]
    if not reg:
        return []
    labels, betas = {s["label"] for s in reg}, {s["beta"] for s in reg}
    seen = {(s["label"], s["beta"], s["lr"], s["optimizer"]) for s in reg}
    extra = [s for s in summary if s["group"] == "main" and s["label"] in labels and s["beta"] in betas
             and (s["label"], s["beta"], s["lr"], s["optimizer"]) not in seen]
    return reg + extra


def regime_findings(summary: list[dict]) -> list[str]:
    reg = _regime_rows(summary)
    lines = []
    for opt in sorted({s["optimizer"] for s in reg}):
        for lr in sorted({s["lr"] for s in reg if s["optimizer"] == opt}):
            at = sorted((s for s in reg if s["optimizer"] == opt and s["lr"] == lr), key=lambda s: s["label"])
            best = max(at, key=lambda s: s["final_win_rate"])
            lines.append(f"{opt} lr {lr:g}: final win rate " + ", ".join(
                f"{s['label']} {_fmt(s['final_win_rate'])} (sqrt KL {_fmt(s['final_sqrt_kl'], 2)})" for s in at)
                + f"; best: {best['label']}.")
    return lines


# ---------------------------------------------------------------------------------------------------
# Gao et al. fits


def gao_fits(points: list[dict]) -> tuple[dict, list[dict]]:
    """RL-form fit R(d) = d (alpha - beta log d) of (win rate - reference) vs d = sqrt KL, per (method,
    beta) of the main grid, through `isdaa.evaluate.fits` (none if that module is unavailable)."""
    try:
        from isdaa.evaluate.fits import fit_gao_rl
    except ImportError:
        return {}, []
    fits, rows = {}, []
    main = [r for r in points if r["group"] == "main"]
    for lab, beta in sorted({(r["label"], r["beta"]) for r in main}):
        rs = [r for r in main if r["label"] == lab and r["beta"] == beta]
        r0 = float(np.mean([r["win_rate"] for r in rs if r["step"] == 0] or [0.0]))
        d = np.array([r["sqrt_kl"] for r in rs if r["step"] > 0])
        y = np.array([r["win_rate"] - r0 for r in rs if r["step"] > 0])
        if len(d) < 3:
            continue
        try:
            fit = fit_gao_rl(d, y)
        except Exception as err:  # a degenerate fit is reported, not fatal
            rows.append({"label": lab, "beta": beta, "error": str(err)})
            continue
        alpha, b = _fit_params(fit)
        fits[(lab, beta)] = {"alpha": alpha, "beta": b, "r0": r0}
        rows.append({"label": lab, "beta": beta, "alpha": alpha, "beta_fit": b, "r0": r0})
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
            cells.append(_fmt(v, int(fmt)) if isinstance(v, float) else str(v))
        body += "| " + " | ".join(cells) + " |\n"
    return head + body


TABLE1_COLS = [("label", "method", ""), ("beta", "beta", "3"), ("n_seeds", "seeds", ""),
               ("peak_win_rate", "peak WR", "3"), ("peak_sqrt_kl", "sqrt KL at peak", "2"),
               ("peak_fraction", "peak at", "2"), ("final_win_rate", "final WR", "3"),
               ("final_win_rate_std", "final WR std", "3"), ("final_kl", "final KL", "2"),
               ("drop", "drop", "3")]


def write_report(root: str | Path, preset=None) -> dict:
    """Write DIR/report.md, DIR/figures/*.png, DIR/csv/*.csv; return paths and the 5-line summary."""
    root = Path(root)
    lab = json.loads((root / "lab.json").read_text())
    p = lab["preset"]
    threshold = float(p.get("overopt_drop", 0.05))
    points = collect_points(root)
    train_rows = collect_train_metrics(root)
    summary = summarize(points, threshold)
    _fits, fit_rows = gao_fits(points)
    csv_dir, fig_dir = root / "csv", root / "figures"
    atomic_write_csv(csv_dir / "points.csv", points, POINT_FIELDS)
    atomic_write_csv(csv_dir / "summary.csv", summary, SUMMARY_FIELDS)
    atomic_write_csv(csv_dir / "train_metrics.csv", train_rows, TRAIN_FIELDS)
    atomic_write_csv(csv_dir / "gao_fits.csv", fit_rows, ["label", "beta", "alpha", "beta_fit", "r0", "error"])
    for run_cfg in root.glob("runs/*/config.yaml"):
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
    found = findings(summary, points, threshold)
    label_stats = _read_marker(root, "label")
    five = five_lines(summary, label_stats, threshold)
    md = _markdown(lab, summary, found, figs, label_stats, threshold, five, examples_table(root, summary, points))
    atomic_write_text(root / "report.md", md)
    atomic_write_json(root / "csv" / "findings.json", {"findings": found, "summary_lines": five})
    return {"report": str(root / "report.md"), "summary_lines": five, "n_points": len(points),
            "n_runs": len({r["run_id"] for r in points})}


def examples_table(root: Path, summary: list[dict], points: list[dict], n: int = 5) -> str:
    """Responses of the run with the largest peak-to-final drop, for the first `n` evaluation prompts:
    pi_ref, the peak checkpoint, the final checkpoint (first sample each, with its golden reward)."""
    main = [s for s in summary if s["group"] == "main" and s["label"] != "online-dpo"]
    if not main:
        return ""
    worst = max(main, key=lambda s: s["drop"])
    k = (worst["group"], worst["label"], worst["beta"], worst["lr"], worst["optimizer"])
    rows = sorted((r for r in points if _key(r) == k and r["seed"] == min(x["seed"] for x in points if _key(x) == k)),
                  key=lambda r: r["step"])
    if not rows:
        return ""
    peak = min(rows, key=lambda r: abs(r["fraction"] - worst["peak_fraction"]))
    final = rows[-1]
    prompts = _eval_prompts(root)
    run_dir = root / "runs" / rows[0]["run_id"] / "eval" / "samples"

    def first(step):
        path = run_dir / ("reference.jsonl" if step == 0 else f"step-{step:08d}.jsonl")
        out = {}
        for rec in read_jsonl(path) if path.exists() else []:
            out.setdefault(rec["prompt_idx"], rec)
        return out

    cols = [(0, "pi_ref"), (peak["step"], f"peak (step {peak['step']})"), (final["step"], f"final (step {final['step']})")]
    samples = [first(step) for step, _ in cols]
    lines = [f"Run `{rows[0]['run_id']}` (the largest drop), first sample per prompt, golden reward in brackets:\n",
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


def five_lines(summary: list[dict], label_stats: dict, threshold: float) -> list[str]:
    main = [s for s in summary if s["group"] == "main"]
    if not main:
        return ["no finished runs"] + [""] * 4
    ref = float(np.nanmean([s["ref_win_rate"] for s in main]))
    best_peak = max(main, key=lambda s: s["peak_win_rate"])
    best_final = max(main, key=lambda s: s["final_win_rate"])
    over = [f"{s['label']}@{s['beta']:g}" for s in main if s["over_optimized"]]
    is_lines = is_comparisons(main)
    helped = sum(line.startswith("IS helped") for line in is_lines)
    hurt = sum(line.startswith("IS hurt") for line in is_lines)
    return [
        f"pi_ref win rate {ref:.3f}; D_golden {label_stats.get('train', {}).get('n_pairs', '?')} pairs",
        f"best peak: {best_peak['label']} beta {best_peak['beta']:g}: {best_peak['peak_win_rate']:.3f} "
        f"at sqrt KL {best_peak['peak_sqrt_kl']:.2f}",
        f"best final: {best_final['label']} beta {best_final['beta']:g}: {best_final['final_win_rate']:.3f} "
        f"(KL {best_final['final_kl']:.2f})",
        f"over-optimized (drop > {threshold:g}): {', '.join(over) if over else 'none'}",
        f"IS vs base method: helped {helped}, hurt {hurt}, no clear difference {len(is_lines) - helped - hurt} "
        f"(of {len(is_lines)} comparisons)",
    ]


def _optimizers(p) -> str:
    """The optimizers and learning rates of the preset's runs, e.g. `adamw lr 0.002`."""
    pairs = sorted({(r["optimizer"], r["lr"]) for r in p["runs"]})
    return ", ".join(f"{o} lr {lr:g}" for o, lr in pairs)


def _markdown(lab, summary, found, figs, label_stats, threshold, five, examples="") -> str:
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
           f"{label_stats.get('dropped_pairs', {}).get('not_reproducible', 0)} whose text does not reproduce the "
           f"sampled tokens.",
           f"- Training: {p['epochs']} epochs, batch {p['batch']} pairs, {_optimizers(p)}, "
           f"{p['scheduler']} learning rate after a linear warmup over {p['warmup_ratio']:g} of the steps "
           f"(the same for every method; chosen when the environment was designed, where a cosine decay damped DPO's decline within 2 epochs), "
           f"checkpoints at fractions {', '.join(f'{f:g}' for f in p['save_fractions'])}.",
           f"- Evaluation per checkpoint: {ev['n_prompts']} held-out prompts x {ev['n_samples']} samples at "
           f"T={ev['temperature']}, top-p {ev['top_p']} against the held-out split's chosen responses (ties count "
           f"1/2); KL(pi_theta||pi_ref) from {ev['n_kl_samples']} separate T=1 samples per prompt (k1 plotted, k3 "
           f"in the CSV); importance ratios on {ev['n_ratio_pairs']} training pairs.",
           ""]
    out += ["## Findings (generated from the numbers)\n", *[f"- {f}" for f in found], ""]
    main = [s for s in summary if s["group"] == "main"]
    if main:
        out += ["## Table 1 analog\n",
                f"Peak = maximum of the seed-mean win-rate curve; drop = peak - final; over-optimized when "
                f"drop > {threshold:g}.\n", _table(main, TABLE1_COLS)]
    other = [s for s in summary if s["group"] != "main"]
    if other:
        out += ["## Ablations\n", _table(other, [("group", "group", ""), ("optimizer", "opt", ""),
                                                  ("lr", "lr", "4")] + TABLE1_COLS)]
    captions = {
        "fig3": "Figure 3 analog: golden win rate vs sqrt KL, one point per checkpoint; lines: Gao RL-form fits.",
        "fig4": "Figure 4 analog: win rate and sqrt KL over training (mean +- se over seeds).",
        "fig5": "Figure 5 analog: clip ablation of IS-DPO.",
        "fig6": "Figure 6 analog: importance ratio of the training pairs under the policy, and the ESS of the clipped weights.",
        "components": "The golden reward's components over training: how the policies over-optimize.",
        "regimes": "Regimes: final win rate and sqrt KL vs learning rate, Adam and SGD.",
    }
    if examples:
        out += ["## What the policies write\n", examples]
    out.append("## Figures\n")
    for name, path in figs.items():
        if path is not None:
            out += [f"{captions[name]}\n", f"![{name}](figures/{Path(path).name})\n"]
    out += ["## Files\n",
            "- `csv/points.csv`: every evaluated checkpoint (all raw numbers); `csv/summary.csv`: the tables; "
            "`csv/train_metrics.csv`: the trainer's per-step metrics; "
            "`csv/gao_fits.csv`; `csv/findings.json`.",
            "- `configs/<run>.yaml`: every run's resolved config; `lab.json`: the preset; "
            "`task/definition.json`: the environment.", ""]
    return "\n".join(out)
