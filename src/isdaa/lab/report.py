"""The lab's report: DIR/report.md, figures/*.png, csv/*.csv, all from the saved results.

`ReportData` is everything the sections read, computed once from files (lab.json, the run folders through
`isdaa.lab.rundir`, stages/label.json) by `isdaa.lab.aggregate`; never the trainer. Each section of
`isdaa.lab.sections.SECTIONS` renders it independently to (markdown, figures, tables); `write_report`
writes every table as csv/<name>.csv and the sections' markdown in order as report.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from isdaa.io import atomic_write_csv, atomic_write_json, atomic_write_text
from isdaa.lab import rundir
from isdaa.lab.aggregate import (
    attach_final_steps,
    collect_per_prompt,
    collect_points,
    collect_train_metrics,
    component_fields,
    control_comparisons,
    is_comparisons,
    mechanism_stats,
    preset_specs,
    quarter_means,
    summarize,
    versus_comparisons,
)
from isdaa.lab.markdown import Section


@dataclass
class ReportData:
    root: Path
    lab: dict  # lab.json
    preset: dict  # the reported preset, as lab.json stores it
    task: object | None  # the Task (None: an old folder whose task cannot be loaded; no components then)
    specs: dict | None  # {run_id: spec} of the reported preset's runs
    threshold: float  # smoothed peak - final above which a run over-optimized
    points: list[dict] = field(default_factory=list)
    train_rows: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)  # IS-<m> vs <m>
    versus: list[dict] = field(default_factory=list)  # IS-DPO vs the mitigations (presets.MITIGATIONS)
    controls: list[dict] = field(default_factory=list)  # the IS-weight controls vs IS-DPO and DPO
    mech: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)  # {config key: update_norm per quarter of training}
    weight_means: dict = field(default_factory=dict)  # {config key: mean is/weight_mean over the second half}
    label_stats: dict = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    five: list[str] = field(default_factory=list)
    others: list[dict] = field(default_factory=list)  # other lab folders' Table 1 (`read_table1`), side by side


def report_task(lab: dict, preset=None):
    """The reported task: the Preset's, else lab.json's `task` reference (`module:Class`), else the key-token
    task for a folder written before tasks were pluggable; None when it cannot be loaded."""
    from isdaa.lab.task import load_task

    if preset is not None and hasattr(preset, "task"):
        return preset.task
    ref = lab.get("task")
    if ref is None and lab.get("environment", {}).get("task") == "key-token summary":
        ref = "key-token"
    try:
        return load_task(ref) if ref else None
    except (ValueError, TypeError):
        return None


def mitigation_keys() -> list[tuple]:
    """The arm keys of presets.MITIGATIONS, the methods IS-DPO is compared with besides its base."""
    from isdaa.lab.aggregate import arm_key
    from isdaa.lab.presets import MITIGATIONS, thaw

    return [arm_key(a.method, dict(a.options), thaw(a.config)) for a in MITIGATIONS]


TABLE1_FLOATS = ("beta", "lr", "ref_win_rate", "smoothed_peak", "smoothed_peak_se",
                 "final_win_rate", "final_win_rate_se", "final_kl", "final_kl_se", "drop", "drop_se")


def read_table1(folder: str | Path) -> dict:
    """Another lab folder's Table 1 for the side-by-side section: its task (lab.json) and the main group's rows
    of its csv/summary.csv (written by its own report); an error naming the file when either is missing."""
    import csv

    folder = Path(folder)
    lab = rundir.read_json(folder / "lab.json")
    path = folder / "csv" / "summary.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (write that folder's report first: isdaa lab --only report)")
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for i, r in enumerate(csv.DictReader(fh), start=2):
            if r.get("group") != "main":
                continue
            try:
                rows.append({**r, **{k: float(r[k]) if r[k] not in ("", None) else float("nan") for k in TABLE1_FLOATS},
                             "n_seeds": int(r["n_seeds"])})
            except (KeyError, ValueError) as err:
                raise ValueError(f"{path}, row {i}: bad or missing field ({err})") from None
    task = lab.get("environment", {}).get("task") or lab.get("task") or folder.name
    return {"folder": str(folder), "task": task, "rows": rows, "preset": lab.get("preset", {}).get("name")}


def load_report_data(root: str | Path, preset=None, compare=()) -> ReportData:
    from isdaa.lab import sections as sec

    root = Path(root)
    lab = rundir.read_json(root / "lab.json")
    p = lab["preset"]
    specs = preset_specs(preset if preset is not None else p)  # the reported preset's runs, as it names them
    task = report_task(lab, preset)
    d = ReportData(root, lab, p, task, specs, float(p.get("overopt_drop", 0.05)))
    d.points = collect_points(root, specs, task)
    d.train_rows = collect_train_metrics(root, specs)
    d.summary = summarize(d.points, d.threshold)
    attach_final_steps(d.summary, d.points)
    per_prompt = collect_per_prompt(root, specs)
    d.comparisons = is_comparisons(d.summary, per_prompt)
    d.versus = versus_comparisons(d.summary, mitigation_keys(), per_prompt)
    d.controls = control_comparisons(d.summary, per_prompt)
    d.mech = mechanism_stats(d.train_rows)
    d.steps = quarter_means(d.train_rows, "update_norm")
    d.weight_means = {k: (q["q3"] + q["q4"]) / 2 for k, q in quarter_means(d.train_rows, "is/weight_mean").items()}
    marker = root / "stages" / "label.json"
    d.label_stats = rundir.read_json(marker) if marker.exists() else {}
    d.findings = sec.findings(d.summary, d.points, d.threshold, component_fields(task))
    d.five = sec.five_lines(d.summary, d.label_stats, d.threshold, d.comparisons)
    d.others = [read_table1(f) for f in compare]
    return d


def write_report(root: str | Path, preset=None, compare=()) -> dict:
    """Write DIR/report.md, DIR/figures/*.png, DIR/csv/*.csv; return paths and the summary lines. `compare`:
    other lab folders (e.g. the other task's) whose Table 1 goes side by side with this one's."""
    from isdaa.lab import sections as sec

    d = load_report_data(root, preset, compare)
    renderers = sec.SECTIONS if d.summary else sec.SECTIONS[:2]  # no finished run: say so once
    parts: list[Section] = [render(d) for render in renderers]
    for part in parts:
        for name, tab in part.tables.items():
            atomic_write_csv(d.root / "csv" / f"{name}.csv", tab.rows, tab.fields)
    for run_dir, _ in rundir.finished_runs(d.root, d.specs):
        if (run_dir / "config.yaml").exists():
            atomic_write_text(d.root / "configs" / f"{run_dir.name}.yaml", (run_dir / "config.yaml").read_text())
    md = f"# isdaa lab report: preset `{d.preset['name']}`\n\n" + "\n".join(
        p.markdown.rstrip() + "\n" for p in parts if p.markdown)
    atomic_write_text(d.root / "report.md", md)
    atomic_write_json(d.root / "csv" / "findings.json",
                      {"findings": d.findings, "summary_lines": d.five,
                       "comparisons": [sec.comparison_sentence(c) for c in d.comparisons]})
    return {"report": str(d.root / "report.md"), "summary_lines": d.five, "n_points": len(d.points),
            "n_runs": len({r["run_id"] for r in d.points})}


__all__ = ["ReportData", "load_report_data", "report_task", "write_report"]
