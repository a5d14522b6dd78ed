"""The report's IS-weight controls, step sizes, Table 1 across tasks and wall times on synthetic lab folders,
against numbers computed by hand in the docstrings."""

import csv
import json

import pytest
from lab_synth import add_run, make_lab

from isdaa.lab import aggregate as agg
from isdaa.lab import report, sections

STEPS = (0, 2, 4, 6, 8)
# final win rate = mean of the last 2 checkpoints: the last two entries of each curve are equal
FINALS = {"dpo": (0.10, 0.12, 0.08), "is-dpo": (0.70, 0.72, 0.68), "mean": (0.69, 0.71, 0.67),
          "permute": (0.10, 0.11, 0.09)}
FINAL_KL = {"dpo": 100.0, "is-dpo": 2.0, "mean": 3.0, "permute": 80.0}


def _curve(final, kl):
    return [(0, 0.5, 0.0), (2, 0.7, kl / 4), (4, 0.75, kl / 2), (6, final, kl * 0.75), (8, final, kl)]


def _norms(seed):
    """update_norm = step (seed 0) or 2 * step (seed 1, 2) at steps 1..8 of 8."""
    return [{"step": i, "update_norm": float(i * (1 if seed == 0 else 2)), "is/weight_mean": 1.0 / i,
             "is/ess": 0.5} for i in range(1, 9)]


@pytest.fixture
def lab(tmp_path):
    """beta 0.01, 3 seeds: main DPO (collapses), IS-DPO (holds); controls `mean` (holds like IS-DPO) and
    `permute` (collapses like DPO)."""
    root = make_lab(tmp_path / "lab")
    for seed in range(3):
        for name, method, options, group in (("dpo", "dpo", {}, "main"), ("is-dpo", "is-dpo", {}, "main"),
                                             ("mean", "is-dpo", {"is_control": "mean"}, "controls"),
                                             ("permute", "is-dpo", {"is_control": "permute"}, "controls")):
            add_run(root, method, seed, _curve(FINALS[name][seed], FINAL_KL[name]), beta=0.01, options=options,
                    group=group, metrics=_norms(seed))
    return root


def test_control_keeps_rule():
    """keeps: helped against the base and not hurt against IS; loses: hurt against IS; otherwise cannot tell."""
    v = lambda verdict: {"verdict": verdict}  # noqa: E731
    assert agg.control_keeps(v("no clear difference"), v("helped")) == "keeps"
    assert agg.control_keeps(v("helped"), v("helped")) == "keeps"
    assert agg.control_keeps(v("hurt"), v("helped")) == "loses"
    assert agg.control_keeps(v("hurt"), v("no clear difference")) == "loses"
    assert agg.control_keeps(v("no clear difference"), v("no clear difference")) == "cannot tell whether it keeps"
    assert agg.control_keeps(None, v("helped")) == "cannot tell whether it keeps"
    # KL: closer to IS-DPO's than to DPO's on a log scale; 3 vs (2, 100): |log 1.5| < |log 0.03|
    row = lambda kl: {"final_kl": kl}  # noqa: E731
    assert agg.control_keeps_kl(row(3.0), row(2.0), row(100.0)) is True
    assert agg.control_keeps_kl(row(80.0), row(2.0), row(100.0)) is False
    assert agg.control_keeps_kl(row(3.0), None, row(100.0)) is None


def test_control_comparisons_and_step_sizes(lab):
    """mean vs DPO: +0.59 (seeds' se sqrt(2) * 0.01547 ...), helped; vs IS-DPO: -0.01 with se over seeds
    sqrt(2 * (0.02 / sqrt 3)^2) = 0.0163, Welch df 4, t 2.776: no clear difference -> keeps. permute vs IS-DPO:
    -0.60, hurt -> loses. Update norms per quarter of 8 steps (fractions 1/8..1): q1 = steps 1-2, ...; seed 0
    (1.5, 3.5, 5.5, 7.5), seeds 1-2 twice that: mean (2.5, 35/6, 55/6, 12.5)."""
    pts = agg.collect_points(lab)
    summary = agg.summarize(pts, 0.05)
    agg.attach_final_steps(summary, pts)
    per_prompt = agg.collect_per_prompt(lab)
    cs = {c["control_name"]: c for c in agg.control_comparisons(summary, per_prompt)}
    assert set(cs) == {"mean", "permute"}
    m, p = cs["mean"], cs["permute"]
    assert m["vs_is"]["diff"] == pytest.approx(-0.01) and m["vs_is"]["se_seeds"] == pytest.approx(0.0163299, abs=1e-6)
    assert m["vs_is"]["df_seeds"] == pytest.approx(4.0) and m["vs_is_verdict"] == "no clear difference"
    assert m["vs_base"]["diff"] == pytest.approx(0.59) and m["vs_base_verdict"] == "helped"
    assert m["keeps"] == "keeps" and m["keeps_kl"] is True
    assert p["vs_is_verdict"] == "hurt" and p["keeps"] == "loses" and p["keeps_kl"] is False
    assert m["is_row"]["name"] == "is-dpo" and m["base_row"]["name"] == "dpo"
    # the controls are not counted among IS vs its base
    assert all(c["is"]["group"] == "main" for c in agg.is_comparisons(summary, per_prompt))
    train = agg.collect_train_metrics(lab)
    q = agg.quarter_means(train)[agg.config_key(m["control"])]
    assert [q[k] for k in ("q1", "q2", "q3", "q4")] == pytest.approx([2.5, 35 / 6, 55 / 6, 12.5])
    assert q["n_runs"] == 3
    # the report's reading by the rule: `mean` keeps the effect -> a step size that decays with the weights
    lines = sections.controls_reading([m, p], "helped")
    assert any("`mean` keeps it" in line and "step size" in line for line in lines)
    assert any(line.startswith("`permute`") and "loses IS-DPO's win-rate effect" in line for line in lines)
    assert any("no control keeps" in line for line in sections.controls_reading([p], "helped"))
    assert "no win-rate effect of IS-DPO" in sections.controls_reading([m], "no clear difference")[0]


def test_report_controls_section_table_cross_task_and_wall_times(lab, tmp_path):
    """The report of `lab` with another folder's Table 1 beside it: the controls section's CSV carries the
    synthetic numbers; the cross-task table holds both folders' final win rates; the wall times come from
    lab_done.json."""
    other = make_lab(tmp_path / "other")
    for seed in range(2):
        add_run(other, "dpo", seed, _curve(0.5 + 0.1 * seed, 4.0), beta=0.01)
    lab_json = json.loads((other / "lab.json").read_text())
    lab_json["environment"]["task"] = "other-task"
    (other / "lab.json").write_text(json.dumps(lab_json))
    report.write_report(other)
    for run in (lab / "runs").iterdir():  # wall times as the pipeline records them
        rec = json.loads((run / "lab_done.json").read_text())
        (run / "lab_done.json").write_text(json.dumps({**rec, "train_seconds": 90.0, "seconds": 120.0}))
    report.write_report(lab, compare=[other])
    md = (lab / "report.md").read_text()
    assert "## IS-weight controls: what IS-DPO's weights do" in md and "Reading by the rule: `mean` keeps it" in md
    with open(lab / "csv" / "controls.csv", newline="") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert float(rows["is-dpo [mean]"]["final_win_rate"]) == pytest.approx(0.69)
    assert float(rows["dpo"]["q4"]) == pytest.approx(12.5) and rows["is-dpo [permute]"]["vs_is"] == "hurt"
    cross = md[md.index("## Table 1 across tasks"):].split("\n## ")[0]
    assert "other-task: final WR" in cross
    dpo_line = next(line for line in cross.splitlines() if line.startswith("| dpo | 0.010 |"))
    # this folder's dpo: mean(.10, .12, .08) = .10 +- .0115; the other's: mean(.5, .6) = .55 +- .05
    assert "0.100 +- 0.012" in dpo_line and "0.550 +- 0.050" in dpo_line
    with open(lab / "csv" / "cross_task.csv", newline="") as fh:
        cross_rows = list(csv.DictReader(fh))
    assert any(r["name"] == "dpo" and float(r["final_win_rate[other-task]"]) == pytest.approx(0.55) for r in cross_rows)
    wall = md[md.index("## Wall times"):].split("\n## ")[0]
    assert "| main | dpo | 0.010 | 3 | 90 | 120 |" in wall and "all runs of this report together 0.40 h" in wall
    with pytest.raises(FileNotFoundError, match="csv/summary.csv"):  # a folder whose report was never written
        report.read_table1(make_lab(tmp_path / "no-report"))
