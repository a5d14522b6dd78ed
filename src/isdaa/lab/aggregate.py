"""The lab's numbers, aggregated from its saved results (read by isdaa.lab.report and isdaa.lab.figures;
never the trainer).

Run folders are read through `isdaa.lab.rundir` only. A run is a row of COLUMNS read from its
`lab_spec.json` (= `RunSpec.to_dict()`): method, beta, lr, optimizer, options, group, n_pairs, scheduler,
warmup_ratio, plus its number of optimizer steps
(summary.json `total_steps`). A configuration is the tuple of every column except seed / run_id / label
(`CONFIG_COLUMNS`): runs that differ in anything but the seed are never averaged together.

Per run (checkpoints ordered by step, pi_ref at step 0 included):
  peak            max win rate over the checkpoints (biased upwards: a max over noisy points)
  smoothed peak   max of the centred 3-checkpoint moving average (2 points at the ends); its checkpoint
                  (the window's centre) gives the sqrt KL and fraction "at the smoothed peak"
  final           mean win rate of the last FINAL_K = 2 trained checkpoints; final KL = the last one's
  drop            smoothed peak - final (>= 0); over-optimized when the seed mean exceeds a threshold
Per configuration: mean and se over seeds (std ddof=1 / sqrt(n); NaN with one seed).
IS vs base (same columns but the method and the IS options): the difference of the seed means with its
se over seeds, and a paired difference over the same evaluation prompts (each prompt's final win rate,
averaged over seeds, from the evaluator's per-prompt records) with its se over prompts. Each is tested
two-sided at level ALPHA against Student-t critical values: over seeds Welch's t with the Welch-
Satterthwaite degrees of freedom (3 + 3 seeds of equal spread: df 4, t 2.776), over prompts the paired t
with N - 1 (256 prompts: df 255, t 1.969). See `verdict`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from isdaa.drift import centered_mean
from isdaa.io import read_jsonl
from isdaa.lab import rundir
from isdaa.lab.presets import CLIP, CONTROLS_GROUP, MAIN, REGIMES, arm_tags
from isdaa.losses import IS_OPTIONS, METHODS, OPTION_DEFAULTS

CONFIG_COLUMNS = ("group", "method", "beta", "lr", "optimizer", "options", "n_pairs", "scheduler",
                  "warmup_ratio", "steps", "config")
RUN_COLUMNS = ("run_id", "label", "seed") + CONFIG_COLUMNS
FINAL_K = 2
ALPHA = 0.05  # two-sided level of the verdicts' t tests
SMOOTH = 3  # checkpoints in the centred moving average of the smoothed peak
MECHANISM_FIELDS = ("is/ess", "is/weight_max", "is/clip_frac", "is/top_share")

POINT_FIELDS = [
    *RUN_COLUMNS, "name", "step", "fraction", "examples_seen",
    "win_rate", "win_rate_se", "tie_rate", "reward_policy", "reward_chosen",
    "kl_k1", "kl_k3", "sqrt_kl", "sqrt_kl_k3", "kl_l_median", "mean_length", "finished_frac",
    "log_ratio_mean", "ratio_mean_log", "weight_mean", "ess", "clip_frac", "logps_chosen", "logps_rejected",
]


def component_fields(task) -> list[str]:
    """The points' columns for a task's golden-reward components (`length` -> `length_words`: the response's
    tokens by the task's rule, next to the evaluator's mean_length in ids, EOS included)."""
    return [] if task is None else ["length_words" if c == "length" else c for c in task.component_names]


def point_fields(task) -> list[str]:
    return POINT_FIELDS[: POINT_FIELDS.index("log_ratio_mean")] + component_fields(task) + \
        POINT_FIELDS[POINT_FIELDS.index("log_ratio_mean"):]
SUMMARY_FIELDS = [
    "name", *CONFIG_COLUMNS, "n_seeds", "ref_win_rate",
    "peak_win_rate", "peak_win_rate_se", "smoothed_peak", "smoothed_peak_se", "peak_sqrt_kl", "peak_fraction",
    "smoothed_peak_sqrt_kl", "smoothed_peak_fraction",
    "final_win_rate", "final_win_rate_se", "final_win_rate_std", "final_kl", "final_kl_se", "final_sqrt_kl",
    "drop", "drop_se", "over_optimized",
]
TRAIN_FIELDS = [*RUN_COLUMNS, "name", "step", "fraction", "loss", "is/weight_mean", *MECHANISM_FIELDS,
                "rewards/margins", "logps/chosen", "logps/rejected", "drift/log_ratio_mean", "grad_norm", "update_norm",
                "wpo/weight_mean", "wpo/ess"]


def base_method(method: str) -> str | None:
    """The base loss of an importance-weighted method (is-dpo -> dpo, the registry's `base`); None for the
    others."""
    m = METHODS.get(method)
    return m.base if m is not None and m.importance_weighted else None


def config_key(row: dict) -> tuple:
    return tuple(row[c] for c in CONFIG_COLUMNS)


# ---------------------------------------------------------------------------------------------------
# Reading runs


def preset_specs(preset) -> dict[str, dict] | None:
    """{run_id: spec dict} of a Preset or of a preset dict as lab.json stores it; None for None."""
    if preset is None or (isinstance(preset, dict) and "runs" not in preset):
        return None
    runs = preset["runs"] if isinstance(preset, dict) else [r.to_dict() for r in preset.runs]
    return {r["run_id"]: r for r in runs}


def read_run(run_dir: Path, spec: dict | None = None) -> dict:
    """The run's RUN_COLUMNS, from `spec` or else the run's lab_spec.json. Absent optional fields default
    (n_pairs None = all pairs; scheduler / warmup_ratio None = the run's resolved config.yaml; steps:
    the spec's, else lab_done.json's, else summary.json's total_steps)."""
    path = run_dir / rundir.SPEC
    spec = dict(spec) if spec is not None else rundir.spec(run_dir)
    missing = [k for k in ("run_id", "label", "seed", "group", "method", "beta", "lr", "optimizer") if k not in spec]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(missing)}")
    optim = {}
    if spec.get("scheduler") is None or spec.get("warmup_ratio") is None:
        optim = rundir.resolved_optim(run_dir)
    steps = spec.get("steps")
    if steps is None:
        steps = (rundir.done_record(run_dir) or {}).get("steps")
    if steps is None:
        steps = rundir.total_steps(run_dir)
    row = {k: spec[k] for k in ("run_id", "label", "seed", "group", "method", "beta", "lr", "optimizer")}
    row.update(options=json.dumps(spec.get("options") or {}, sort_keys=True), n_pairs=spec.get("n_pairs"),
               config=json.dumps(spec.get("config") or {}, sort_keys=True),
               scheduler=spec.get("scheduler") or optim.get("scheduler"),
               warmup_ratio=spec.get("warmup_ratio") if spec.get("warmup_ratio") is not None
               else optim.get("warmup_ratio"),
               steps=int(steps) if steps is not None else None)
    return row


def eval_prompts(root: Path) -> list[str]:
    return [r["prompt"] for r in read_jsonl(root / "data" / "golden_eval" / "pairs.jsonl")]


def _components(run_dir: Path, name: str, prompts: list[str], task) -> dict:
    """Mean golden-reward components of a checkpoint's saved samples ({} without a task or samples)."""
    recs = rundir.samples(run_dir, name) if task is not None else []
    if not recs:
        return {}
    comps = task.mean_components([prompts[r["prompt_idx"]] for r in recs], [r["response"] for r in recs])
    comps.pop("reward", None)
    return {("length_words" if k == "length" else k): v for k, v in comps.items()}


def collect_points(root: str | Path, specs: dict[str, dict] | None = None, task=None) -> list[dict]:
    """One row per (finished run, evaluated checkpoint), the reference policy at step 0 included;
    `specs`: see `rundir.finished_runs`; `task`: its golden-reward components of the saved samples."""
    root = Path(root)
    prompts = eval_prompts(root)
    rows = []
    for run_dir, spec in rundir.finished_runs(root, specs):
        base = read_run(run_dir, spec)
        ratios = {r["step"]: r for r in rundir.ratios(run_dir)}
        total = base["steps"]
        for e in rundir.evals(run_dir):
            step = e["_step"]
            row = dict(base, step=step, fraction=(step / total) if total else None,
                       examples_seen=0 if step == 0 else e.get("examples_seen"),
                       win_rate=e["win_rate"], win_rate_se=e["win_rate_se"], tie_rate=e["tie_rate"],
                       reward_policy=e["reward_policy"], reward_chosen=e["reward_chosen"],
                       kl_k1=e["kl_k1"], kl_k3=e["kl_k3"], sqrt_kl=math.sqrt(max(e["kl_k1"], 0.0)),
                       sqrt_kl_k3=math.sqrt(max(e["kl_k3"], 0.0)), kl_l_median=e["kl"]["l_median"],
                       mean_length=e["mean_length"], finished_frac=e["finished_frac"])
            row.update(_components(run_dir, e["_name"], prompts, task))
            rat = ratios.get(step, {})
            row.update({k: rat.get(k) for k in ("log_ratio_mean", "ratio_mean_log", "weight_mean", "ess",
                                                "clip_frac", "logps_chosen", "logps_rejected")})
            rows.append(row)
    _attach_names(rows)
    rows.sort(key=lambda r: (r["group"], r["name"], r["beta"], r["seed"], r["step"]))
    return rows


def collect_per_prompt(root: str | Path, specs: dict[str, dict] | None = None) -> dict[tuple[str, int], np.ndarray]:
    """{(run_id, step): (N,) per-prompt win rates} from the evaluator's records (`per_prompt.win`: the
    mean over a prompt's samples of 1[r* > r*(chosen)] + 1/2 1[=]; prompt i is the i-th eval prompt)."""
    out = {}
    for run_dir, _ in rundir.finished_runs(Path(root), specs):
        for e in rundir.evals(run_dir):
            win = (e.get("per_prompt") or {}).get("win")
            if win is not None:
                out[(run_dir.name, e["_step"])] = np.asarray(win, dtype=float)
    return out


def collect_train_metrics(root: str | Path, specs: dict[str, dict] | None = None) -> list[dict]:
    """The trainer's per-step records (metrics.jsonl) of every finished run, the fields of TRAIN_FIELDS
    (`is/top_share` is absent in runs older than its metric: None)."""
    rows, runs = [], []
    for run_dir, spec in rundir.finished_runs(Path(root), specs):
        base = read_run(run_dir, spec)
        runs.append(base)
        total = base["steps"] or 1
        for rec in rundir.metrics(run_dir):
            if "loss" not in rec:
                continue
            rows.append({**base, "fraction": rec["step"] / total,
                         **{k: rec.get(k) for k in TRAIN_FIELDS[len(RUN_COLUMNS) + 1:] if k != "fraction"}})
    _attach_names(rows, runs)  # the names of the points: from every finished run, logged or not
    return rows


# ---------------------------------------------------------------------------------------------------
# Display names


def short_name(row: dict) -> str:
    """The method and its options, e.g. `is-dpo [self-norm]`, `dpo [wpo, no clamp]` (`presets.arm_tags`;
    legends where the regime is in the title)."""
    tags = arm_tags(json.loads(row["options"]), json.loads(row.get("config") or "{}"))
    return row["method"] + (f" [{', '.join(tags)}]" if tags else "")


def display_names(rows: list[dict], omit: tuple[str, ...] = ()) -> dict[tuple, str]:
    """{config key: name}: the method, its options in brackets, then each column (optimizer, lr,
    scheduler, warmup, n_pairs, steps) that varies among `rows`' configurations, e.g. `dpo lr=1e-4`,
    `is-dpo [self-norm]`, `dpo (114 steps)`; columns in `omit` are left out (a figure's axis). beta and
    group are shown by the tables / panels."""
    keys = {config_key(r): r for r in rows}
    varies = [c for c in ("optimizer", "lr", "scheduler", "warmup_ratio", "n_pairs", "steps")
              if c not in omit and len({r[c] for r in keys.values()}) > 1]

    def names(cols):
        return {k: short_name(r) + "".join(_name_part(c, r[c]) for c in cols) for k, r in keys.items()}

    def n_distinct(cols):
        named = names(cols)
        return len({(r["beta"], named[k]) for k, r in keys.items()})

    # columns that co-vary with another (n_pairs with steps, a schedule with its regime) are left out
    # when no two names merge without them: `dpo (114 steps)`, not `dpo constant 3700 pairs (114 steps)`
    for c in ("n_pairs", "warmup_ratio", "scheduler"):
        if c in varies and n_distinct([v for v in varies if v != c]) == n_distinct(varies):
            varies.remove(c)
    return names(varies)


def _name_part(column: str, value) -> str:
    if column == "lr":
        return f" lr={value:g}"
    if column == "warmup_ratio":
        return f" warmup={value:g}" if value is not None else " warmup=?"
    if column == "n_pairs":
        return f" {value if value is not None else 'all'} pairs"
    if column == "steps":
        return f" ({value} steps)"
    return f" {value}"  # optimizer, scheduler


def _attach_names(rows: list[dict], universe: list[dict] | None = None) -> None:
    """Names per group of `universe` (default: the rows): a column varying in another group does not
    lengthen this group's names."""
    by_group = defaultdict(list)
    for r in rows if universe is None else universe:
        by_group[r["group"]].append(r)
    names = {}
    for group_rows in by_group.values():
        names.update(display_names(group_rows))
    for r in rows:
        r["name"] = names[config_key(r)]


# ---------------------------------------------------------------------------------------------------
# Statistics (pure functions of the rows)


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error over seeds (std ddof=1 / sqrt(n)); se NaN for one value."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")


def smoothed(values) -> np.ndarray:
    """Centred moving average over SMOOTH = 3 consecutive checkpoints (2 at the ends): the lab's one
    smoothing of a curve, `isdaa.drift.centered_mean` (the drift analysis' golden curve uses it too)."""
    return np.asarray(centered_mean([float(v) for v in values], SMOOTH))


def run_stats(rows: list[dict], k: int = FINAL_K) -> dict:
    """One run's statistics from its checkpoints (any order): peak, smoothed peak, final (mean of the
    last k trained checkpoints), final KL (the last checkpoint's), drop = smoothed peak - final."""
    rows = sorted(rows, key=lambda r: r["step"])
    wr = np.array([r["win_rate"] for r in rows], dtype=float)
    trained = [r for r in rows if r["step"] > 0] or rows
    i = int(np.argmax(wr))
    final = float(np.mean([r["win_rate"] for r in trained[-k:]]))
    sm_curve = smoothed(wr)
    j = int(np.argmax(sm_curve))  # the smoothed peak's checkpoint (first maximum)
    sm = float(sm_curve[j])
    return {"peak": float(wr[i]), "peak_sqrt_kl": rows[i]["sqrt_kl"], "peak_fraction": rows[i]["fraction"],
            "smoothed_peak": sm, "smoothed_peak_step": rows[j]["step"], "smoothed_peak_sqrt_kl": rows[j]["sqrt_kl"],
            "smoothed_peak_fraction": rows[j]["fraction"], "final": final, "final_kl": trained[-1]["kl_k1"],
            "final_sqrt_kl": trained[-1]["sqrt_kl"], "drop": sm - final,
            "ref": rows[0]["win_rate"] if rows[0]["step"] == 0 else float("nan"),
            "final_steps": [r["step"] for r in trained[-k:]]}


def curves(points: list[dict], field: str, x: str = "fraction") -> dict:
    """{config key: (x (F,), mean (F,), se over seeds (F,) (0 with one seed), n_seeds)} for `field`."""
    by = defaultdict(lambda: defaultdict(list))
    for r in points:
        if r.get(field) is not None and r.get(x) is not None:
            by[config_key(r)][round(r[x], 6)].append(r[field])
    out = {}
    for key, per_x in by.items():
        xs = np.array(sorted(per_x))
        vals = [np.asarray(per_x[v], dtype=float) for v in xs]
        mean = np.array([v.mean() for v in vals])
        se = np.array([v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0 for v in vals])
        out[key] = (xs, mean, se, max(len(v) for v in vals))
    return out


def by_config(points: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """{config key: {run_id: that run's rows}}."""
    out: dict = defaultdict(lambda: defaultdict(list))
    for r in points:
        out[config_key(r)][r["run_id"]].append(r)
    return out


def summarize(points: list[dict], drop_threshold: float, k: int = FINAL_K) -> list[dict]:
    """Table 1 analog, one row per configuration: mean and se over seeds of each run's statistics."""
    out = []
    for runs in by_config(points).values():
        stats = [run_stats(rows, k) for rows in runs.values()]
        first = next(iter(runs.values()))[0]
        row = {c: first[c] for c in CONFIG_COLUMNS}
        row.update(name=first["name"], n_seeds=len(stats), ref_win_rate=float(np.nanmean([s["ref"] for s in stats])))
        for field, stat in (("peak_win_rate", "peak"), ("smoothed_peak", "smoothed_peak"),
                            ("final_win_rate", "final"), ("final_kl", "final_kl"), ("drop", "drop")):
            row[field], row[f"{field}_se"] = mean_se(s[stat] for s in stats)
        row["final_win_rate_std"] = row["final_win_rate_se"] * math.sqrt(len(stats))
        row["peak_sqrt_kl"] = float(np.mean([s["peak_sqrt_kl"] for s in stats]))
        row["peak_fraction"] = float(np.mean([s["peak_fraction"] or 0.0 for s in stats]))
        row["smoothed_peak_sqrt_kl"] = float(np.mean([s["smoothed_peak_sqrt_kl"] for s in stats]))
        row["smoothed_peak_fraction"] = float(np.mean([s["smoothed_peak_fraction"] or 0.0 for s in stats]))
        row["final_sqrt_kl"] = float(np.mean([s["final_sqrt_kl"] for s in stats]))
        row["over_optimized"] = bool(row["drop"] > drop_threshold)
        out.append(row)
    out.sort(key=lambda r: (r["group"], r["optimizer"], r["lr"], r["steps"] or 0, r["beta"], r["name"]))
    return out


# ---------------------------------------------------------------------------------------------------
# IS vs base


def _base_options(options_json: str) -> str:
    return json.dumps({k: v for k, v in json.loads(options_json).items() if k not in IS_OPTIONS}, sort_keys=True)


def _base_row(s: dict, summary: list[dict]) -> dict | None:
    """The base method's configuration matching IS row `s` in every column but method and IS options;
    the same group first, then any group but the clip ablation (runs are shared across presets)."""
    want = dict(s, method=base_method(s["method"]), options=_base_options(s["options"]))
    match = [b for b in summary if all(b[c] == want[c] for c in CONFIG_COLUMNS if c != "group")
             and b["group"] != CLIP]
    same = [b for b in match if b["group"] == s["group"]]
    return (same or match or [None])[0]


def paired_final(a: dict, b: dict, per_prompt: dict, k: int = FINAL_K) -> tuple[float, float, int]:
    """Paired difference a - b over the same evaluation prompts: prompt i's final win rate (mean over the
    last k checkpoints, then over seeds) per configuration; mean of the per-prompt differences and its
    se over prompts (std ddof=1 / sqrt(N)). NaN when a run lacks per-prompt records."""
    def final(summary_row):
        per_seed = []
        for rid, steps in summary_row["final_steps"].items():
            arrs = [per_prompt.get((rid, st)) for st in steps]
            if any(x is None for x in arrs):
                return None
            per_seed.append(np.mean(arrs, axis=0))
        return np.mean(per_seed, axis=0)

    fa, fb = final(a), final(b)
    if fa is None or fb is None or fa.shape != fb.shape or fa.size < 2:
        return float("nan"), float("nan"), 0
    d = fa - fb
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size)), int(d.size)


def attach_final_steps(summary: list[dict], points: list[dict], k: int = FINAL_K) -> None:
    """Each summary row gets `final_steps`: {run_id: the steps averaged into its final win rate}."""
    runs = by_config(points)
    for s in summary:
        s["final_steps"] = {rid: run_stats(rows, k)["final_steps"] for rid, rows in runs[config_key(s)].items()}


def t_critical(df: float, alpha: float = ALPHA) -> float:
    """The two-sided Student-t critical value t_{1 - alpha/2, df} (scipy.stats.t.ppf)."""
    from scipy.stats import t

    return float(t.ppf(1 - alpha / 2, df))


def welch_df(se_a: float, n_a: int, se_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom of a difference of two means with standard errors se_a, se_b
    over n_a, n_b seeds: (se_a^2 + se_b^2)^2 / (se_a^4 / (n_a - 1) + se_b^4 / (n_b - 1)); n_a + n_b - 2 when
    both se are 0 (identical seeds: the ratio is undefined)."""
    va, vb = se_a ** 2, se_b ** 2
    den = va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)
    return (va + vb) ** 2 / den if den > 0 else float(n_a + n_b - 2)


def t_test(diff: float, se: float, df: float) -> str:
    """`+` / `-` when |diff| exceeds t_{1 - ALPHA/2, df} * se on that side, else `0`."""
    if math.isnan(se) or math.isnan(df) or df <= 0:
        return "0"
    crit = t_critical(df) * se
    return "+" if diff > crit else "-" if diff < -crit else "0"


VERDICTS = ("helped", "hurt", "no clear difference", "untested over seeds", "untested")


def verdict(diff: float, se_seeds: float, df_seeds: float, paired_diff: float, paired_se: float,
            n_prompts: int) -> str:
    """IS vs base, from the two t tests (ALPHA two-sided). With >= 2 seeds on both sides (df_seeds not NaN):
    `helped` / `hurt` when the test over seeds and, where per-prompt records exist, the paired test over
    prompts (df n_prompts - 1) both find a difference on that side, else `no clear difference`. With one
    seed on a side the run-to-run variation is unknown: `untested over seeds`, whatever the paired test
    says (its numbers are still reported); `untested` when neither test can be made."""
    if math.isnan(df_seeds):
        return "untested over seeds" if n_prompts >= 2 and not math.isnan(paired_se) else "untested"
    tests = [t_test(diff, se_seeds, df_seeds)]
    if n_prompts >= 2 and not math.isnan(paired_se):
        tests.append(t_test(paired_diff, paired_se, n_prompts - 1))
    if all(t == "+" for t in tests):
        return "helped"
    if all(t == "-" for t in tests):
        return "hurt"
    return "no clear difference"


def compare(s: dict, b: dict, per_prompt: dict | None = None) -> dict:
    """Configuration `s` ("is") against `b` ("base"): the difference of their final win rates over seeds
    (Welch) and paired over prompts, with the `verdict`."""
    diff = s["final_win_rate"] - b["final_win_rate"]
    se_seeds = math.sqrt(s["final_win_rate_se"] ** 2 + b["final_win_rate_se"] ** 2)  # NaN with 1 seed
    df_seeds = (welch_df(s["final_win_rate_se"], s["n_seeds"], b["final_win_rate_se"], b["n_seeds"])
                if not math.isnan(se_seeds) else float("nan"))
    pd_, pse, n_prompts = (paired_final(s, b, per_prompt) if per_prompt is not None and "final_steps" in s
                           and "final_steps" in b else (float("nan"), float("nan"), 0))
    return {"group": s["group"], "is": s, "base": b, "n_seeds": min(s["n_seeds"], b["n_seeds"]),
            "diff": diff, "se_seeds": se_seeds, "df_seeds": df_seeds,
            "t_seeds": t_critical(df_seeds) if not math.isnan(df_seeds) else float("nan"),
            "paired_diff": pd_, "paired_se": pse, "n_prompts": n_prompts,
            "t_prompts": t_critical(n_prompts - 1) if n_prompts >= 2 else float("nan"),
            "verdict": verdict(diff, se_seeds, df_seeds, pd_, pse, n_prompts)}


def is_comparisons(summary: list[dict], per_prompt: dict | None = None) -> list[dict]:
    """IS-<m> (any IS option) vs <m> at equal beta / lr / optimizer / schedule / data / steps, outside the
    clip ablation and the IS-weight controls (`control_comparisons`); each with its `verdict` (t tests over
    seeds and over prompts)."""
    out = []
    for s in summary:
        if s["group"] in (CLIP, CONTROLS_GROUP) or base_method(s["method"]) is None:
            continue
        b = _base_row(s, summary)
        if b is not None:
            out.append(compare(s, b, per_prompt))
    return out


def control_comparisons(summary: list[dict], per_prompt: dict | None = None, method: str = "is-dpo") -> list[dict]:
    """Each IS-weight control (group `controls`: `method` with an `is_control`) against plain `method` and
    against its base method (DPO), both of the main grid at the same beta and regime; {"control": row,
    "vs_is": compare(control, IS), "vs_base": compare(control, base)} (either None when that run is
    missing)."""
    regime = [c for c in CONFIG_COLUMNS if c not in ("group", "method", "options", "config")]
    out = []
    for s in summary:
        if s["group"] != CONTROLS_GROUP:
            continue

        def find(m):
            rows = [b for b in summary if b["group"] == MAIN and (b["method"], b["options"], b["config"]) == arm_key(m)
                    and all(b[c] == s[c] for c in regime)]
            return rows[0] if rows else None

        is_row, base_row = find(method), find(base_method(method))
        vs_is = compare(s, is_row, per_prompt) if is_row else None
        vs_base = compare(s, base_row, per_prompt) if base_row else None
        out.append({"control": s, "is_row": is_row, "base_row": base_row, "vs_is": vs_is, "vs_base": vs_base,
                    "control_name": json.loads(s["options"]).get("is_control", "?"),
                    "vs_is_verdict": vs_is["verdict"] if vs_is else "n/a",
                    "vs_base_verdict": vs_base["verdict"] if vs_base else "n/a",
                    "keeps": control_keeps(vs_is, vs_base), "keeps_kl": control_keeps_kl(s, is_row, base_row)})
    return out


CONTROL_KEEPS = ("keeps", "loses", "cannot tell whether it keeps")


def control_keeps(vs_is: dict | None, vs_base: dict | None) -> str:
    """Whether a control keeps IS-DPO's win-rate effect (sections.CONTROLS_RULE): `keeps` when it beats the
    base method (`helped` against it) and is not worse than IS-DPO; `loses` when it is worse than IS-DPO
    (`hurt` against it); otherwise the tests cannot tell."""
    if vs_is is None or vs_base is None:
        return CONTROL_KEEPS[2]
    if vs_is["verdict"] == "hurt":
        return CONTROL_KEEPS[1]
    if vs_base["verdict"] == "helped":
        return CONTROL_KEEPS[0]
    return CONTROL_KEEPS[2]


def control_keeps_kl(s: dict, is_row: dict | None, base_row: dict | None) -> bool | None:
    """The control's final KL closer to IS-DPO's than to the base method's on a log scale (None: a row is
    missing or a KL is not positive)."""
    if is_row is None or base_row is None or min(s["final_kl"], is_row["final_kl"], base_row["final_kl"]) <= 0:
        return None
    lk = math.log(s["final_kl"])
    return abs(lk - math.log(is_row["final_kl"])) < abs(lk - math.log(base_row["final_kl"]))


def arm_key(method: str, options: dict | None = None, config: dict | None = None) -> tuple:
    """A configuration's method identity as the summary rows hold it: (method, options JSON, config JSON)."""
    return method, json.dumps(options or {}, sort_keys=True), json.dumps(config or {}, sort_keys=True)


def versus_comparisons(summary: list[dict], against: list[tuple], per_prompt: dict | None = None,
                       method: str = "is-dpo") -> list[dict]:
    """Plain `method` (no options) of the main group against each configuration whose `arm_key` is in
    `against` (e.g. presets.MITIGATIONS: WPO, TR-DPO, the SFT term) at the same beta and regime."""
    regime = [c for c in CONFIG_COLUMNS if c not in ("group", "method", "options", "config")]
    keys = set(against)
    out = []
    for s in summary:
        if s["group"] != MAIN or (s["method"], s["options"], s["config"]) != arm_key(method):
            continue
        for b in summary:
            if (b["method"], b["options"], b["config"]) in keys and all(b[c] == s[c] for c in regime):
                out.append(compare(s, b, per_prompt))
    return out


# ---------------------------------------------------------------------------------------------------
# Clip ablation and regimes


def clip_table(summary: list[dict]) -> list[tuple[float, dict]]:
    """[(eps, summary row)] of the clip ablation (is_clip from the options column), with the main grid's
    matching run at the default eps (no is_clip option) when it exists."""
    clip = [s for s in summary if s["group"] == CLIP]
    out = [(float(json.loads(s["options"]).get("is_clip", OPTION_DEFAULTS["is_clip"])), s) for s in clip]
    if out:
        ref = clip[0]
        others = {k: v for k, v in json.loads(ref["options"]).items() if k != "is_clip"}
        for s in summary:
            if (s["group"] == MAIN and s["method"] == ref["method"]
                    and all(s[c] == ref[c] for c in CONFIG_COLUMNS if c not in ("group", "options"))
                    and json.loads(s["options"]) == others):
                out.append((float(OPTION_DEFAULTS["is_clip"]), s))
    return sorted(out, key=lambda t: t[0])


def regime_of(row: dict) -> tuple:
    """What a regime is: how the policy is stepped (optimizer, lr, schedule, warmup, data, steps)."""
    return (row["optimizer"], row["lr"], row["scheduler"], row["warmup_ratio"], row["n_pairs"], row["steps"])


def regime_title(row: dict) -> str:
    pairs = "all pairs" if row["n_pairs"] is None else f"{row['n_pairs']} pairs"
    warm = f", warmup {row['warmup_ratio']:g}" if row["warmup_ratio"] is not None else ""
    return f"{row['optimizer']} lr {row['lr']:g}, {row['scheduler']}{warm}, {row['steps']} steps ({pairs})"


def regime_rows(summary: list[dict]) -> list[dict]:
    """The regimes comparison: its own runs plus identical configurations run under another preset (e.g.
    the main grid's DPO at the same beta and regime; runs are shared across presets)."""
    reg = [s for s in summary if s["group"] == REGIMES]
    if not reg:
        return []
    seen = {config_key(dict(s, group="")) for s in reg}
    methods, betas = {s["method"] for s in reg}, {s["beta"] for s in reg}
    extra = [s for s in summary if s["group"] == MAIN and s["method"] in methods and s["beta"] in betas
             and config_key(dict(s, group="")) not in seen]
    return reg + extra


QUARTERS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))


def quarter_means(train_rows: list[dict], field: str = "update_norm") -> dict[tuple, dict]:
    """Per configuration: the mean of `field` (the optimizer step's norm ||theta_t+1 - theta_t||, logged with
    `log_update_norm`) over each quarter of training (QUARTERS by fraction; the first quarter includes
    the warmup), mean over seeds; {"q1".."q4": value, "n_runs"}. Configurations that did not log it are
    absent."""
    by = defaultdict(lambda: defaultdict(list))
    for r in train_rows:
        if r.get(field) is not None:
            by[config_key(r)][r["run_id"]].append(r)
    out = {}
    for key, runs in by.items():
        per_run = []
        for rows in runs.values():
            q = {}
            for i, (lo, hi) in enumerate(QUARTERS, start=1):
                vals = [r[field] for r in rows if lo < r["fraction"] <= hi or (i == 1 and r["fraction"] == 0)]
                q[f"q{i}"] = float(np.mean(vals)) if vals else float("nan")
            per_run.append(q)
        out[key] = {k: float(np.mean([p[k] for p in per_run])) for k in per_run[0]} | {"n_runs": len(per_run)}
    return out


def mechanism_stats(train_rows: list[dict]) -> dict[tuple, dict]:
    """Per IS configuration, over its runs' logged steps (then mean over seeds): median ESS, the first
    fraction of training where ESS < 0.1, the fraction of steps whose max weight sits at the clip
    e^(2 eps), the mean clipped fraction, the median top-pair share (None when not logged)."""
    by = defaultdict(lambda: defaultdict(list))
    for r in train_rows:
        if base_method(r["method"]) is not None and r.get("is/ess") is not None:
            by[config_key(r)][r["run_id"]].append(r)
    out = {}
    for key, runs in by.items():
        per_run = []
        for rows in runs.values():
            rows = sorted(rows, key=lambda r: r["step"])
            eps = float(json.loads(rows[0]["options"]).get("is_clip", OPTION_DEFAULTS["is_clip"]))
            ess = np.array([r["is/ess"] for r in rows], dtype=float)
            wmax = np.array([r.get("is/weight_max") or np.nan for r in rows], dtype=float)
            clipf = np.array([r.get("is/clip_frac") or 0.0 for r in rows], dtype=float)
            top = [r["is/top_share"] for r in rows if r.get("is/top_share") is not None]
            below = [r["fraction"] for r, e in zip(rows, ess) if e < 0.1]
            per_run.append({"ess_median": float(np.median(ess)), "ess_min": float(ess.min()),
                            "ess_below_0.1_at": below[0] if below else None,
                            "at_clip_frac": float(np.mean(wmax >= math.exp(2 * eps) * (1 - 1e-3))),
                            "clip_frac_mean": float(clipf.mean()),
                            "top_share_median": float(np.median(top)) if top else None})
        agg = {}
        for f in per_run[0]:
            vals = [p[f] for p in per_run if p[f] is not None]
            agg[f] = float(np.mean(vals)) if vals else None
        agg["n_below"] = sum(p["ess_below_0.1_at"] is not None for p in per_run)
        agg["n_runs"] = len(per_run)
        out[key] = agg
    return out
