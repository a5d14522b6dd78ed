"""`isdaa lab` end to end on the micro preset: every stage, kill + resume, the report against its CSVs."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from isdaa.cli import main
from isdaa.lab import rundir
from isdaa.lab.presets import get_preset

pytestmark = pytest.mark.slow


# every arm once: DPO, IS-DPO, online DPO, the mitigations (WPO, TR-DPO, DPO + SFT, length-normalized DPO) and
# the IS-weight controls
MICRO_RUNS = sorted(r.run_id for r in get_preset("micro").runs)


def _done_markers(out: Path) -> dict[str, tuple[float, str]]:
    return {p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in out.glob("runs/*/lab_done.json")}


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    """Start the micro lab in a subprocess, SIGKILL it once the first sweep run is finished (mid-sweep),
    then run it again through the CLI (2 workers): returns (out dir, markers before, CLI result)."""
    out = tmp_path_factory.mktemp("lab") / "micro"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "isdaa.cli", "lab", "--preset", "micro", "--out", str(out), "--jobs", "1",
         "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    deadline = time.time() + 90
    try:
        while time.time() < deadline and proc.poll() is None and not _done_markers(out):
            time.sleep(0.1)
        assert proc.poll() is None or proc.returncode == 0, proc.stderr.read().decode()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
        proc.wait()
    before = _done_markers(out)
    n = len(MICRO_RUNS)
    assert 1 <= len(before) < n, f"killed with {len(before)} of {n} runs finished: not mid-sweep"
    result = CliRunner().invoke(main, ["lab", "--preset", "micro", "--out", str(out), "--jobs", "2", "--no-progress"])
    return out, before, result


def test_every_stage_ran(lab_run):
    out, _, result = lab_run
    assert result.exit_code == 0, result.output + repr(result.exception)
    for stage in ("task", "sft", "label"):
        assert (out / "stages" / f"{stage}.json").exists()
    assert rundir.final_model(out / "sft").exists() and (out / "sft" / "summary.json").exists()
    rows = [json.loads(line) for line in (out / "data" / "golden_train" / "pairs.jsonl").read_text().splitlines()]
    assert len(rows) == 128
    assert {"prompt", "chosen", "rejected", "chosen_logps", "rejected_logps", "ref_chosen_logps",
            "ref_rejected_logps"} <= set(rows[0])
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(MICRO_RUNS) == 10 and runs == MICRO_RUNS
    for name in runs:
        run = out / "runs" / name
        assert (run / "lab_done.json").exists() and (run / "config.yaml").exists()
        steps = [s for s, _ in rundir.checkpoints(run)]
        assert len(steps) == 2  # fractions 0.5 and 1.0
        assert [e["_step"] for e in rundir.evals(run)] == [0] + steps  # pi_ref + every checkpoint
        assert (out / "configs" / f"{name}.yaml").exists()
    # the CLI's closing lines: the report's path and the 5-line summary
    assert f"report: {out / 'report.md'}" in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("  ")]) == 5


def test_resume_skips_finished_runs(lab_run):
    out, before, _ = lab_run
    after = _done_markers(out)
    assert set(before) <= set(after) and len(after) == len(MICRO_RUNS)
    for name, marker in before.items():
        assert after[name] == marker, f"{name} was redone"


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_report_numbers_match_csv(lab_run):
    out, _, _ = lab_run
    md = (out / "report.md").read_text()
    for name in ("fig3_winrate_vs_sqrtkl.png", "fig4_dynamics.png", "fig6_importance.png", "fig_components.png"):
        assert (out / "figures" / name).stat().st_size > 1000 and f"figures/{name}" in md
    points = _read_csv(out / "csv" / "points.csv")
    assert len(points) == len(MICRO_RUNS) * 3  # reference + 2 checkpoints per run
    # points.csv against the evaluator's per-checkpoint JSON
    for p in points:
        ev = {e["_step"]: e for e in rundir.evals(out / "runs" / p["run_id"])}[int(p["step"])]
        assert float(p["win_rate"]) == pytest.approx(ev["win_rate"])
        assert float(p["kl_k1"]) == pytest.approx(ev["kl_k1"])
    # Table 1 rows in report.md against summary.csv
    summary = {r["name"]: r for r in _read_csv(out / "csv" / "summary.csv")}
    table1 = md[md.index("## Table 1 analog"):].split("\n## ")[0]
    table = [line for line in table1.splitlines() if re.match(r"\| (online-dpo|is-dpo|dpo) \|", line)]
    assert len(table) == 3
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        s = summary[cells[0]]
        assert float(cells[3]) == pytest.approx(float(s["peak_win_rate"]), abs=5e-4)
        assert float(cells[4]) == pytest.approx(float(s["smoothed_peak"]), abs=5e-4)
        assert float(cells[7]) == pytest.approx(float(s["final_win_rate"]), abs=5e-4)
        assert float(cells[8]) == pytest.approx(float(s["final_kl"]), abs=5e-3)
        assert float(cells[9]) == pytest.approx(float(s["drop"]), abs=5e-4)
        # 1 seed: final = mean of the run's last 2 checkpoints in points.csv; peak = max over its checkpoints
        rows = sorted((p for p in points if p["name"] == cells[0]), key=lambda p: int(p["step"]))
        last_two = (float(rows[-1]["win_rate"]) + float(rows[-2]["win_rate"])) / 2
        assert float(s["final_win_rate"]) == pytest.approx(last_two)
        assert float(s["peak_win_rate"]) == pytest.approx(max(float(p["win_rate"]) for p in rows))
    # the summary lines printed by the CLI are the report's
    five = json.loads((out / "csv" / "findings.json").read_text())["summary_lines"]
    assert all(f"- {line}" in md for line in five)


def test_only_report_rewrites_from_saved_results(lab_run):
    out, _, _ = lab_run
    before = _done_markers(out)
    (out / "report.md").unlink()
    result = CliRunner().invoke(main, ["lab", "--preset", "micro", "--out", str(out), "--only", "report",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / "report.md").exists() and _done_markers(out) == before


def test_every_arm_trained_as_configured(lab_run):
    """Each mitigation and control reached the engine as meant (resolved config.yaml) and shows in its per-step
    metrics: WPO's weights (TRL 1.x: unclamped, so a weight may exceed 1), TR-DPO's sync at step 2, the
    `mean` control's equal weights (ESS exactly 1), the update norm of every offline step; the report has
    the mitigations' and the controls' sections."""
    import yaml

    out, _, _ = lab_run
    runs = {p.name: p for p in (out / "runs").iterdir()}

    def cfg(prefix):
        (name,) = [n for n in runs if n.startswith(prefix)]
        return yaml.safe_load((runs[name] / "config.yaml").read_text()), rundir.metrics(runs[name])

    c, m = cfg("dpo_b0.1_lr0.002_adamw_wpo_weighting=True")
    assert c["loss"]["wpo_weighting"] is True and c["loss"]["wpo_max_weight"] is None
    assert all(r["wpo/weight_max"] > 0 and 0 < r["wpo/ess"] <= 1 for r in m if "loss" in r)
    c, m = cfg("dpo_b0.1_lr0.002_adamw_ref_sync")
    assert c["ref_sync"] == {"alpha": 0.6, "steps": 2} and c["ref_logps"] == "on_the_fly"
    assert [r.get("ref_sync/syncs") for r in m if "loss" in r] == [None, 1]
    c, _ = cfg("dpo-sft_")
    assert c["method"] == "dpo-sft" and c["loss"]["dpo_sft_weight"] == 1.0 and c["micro_batch_size"] == c["batch_size"]
    c, _ = cfg("dpo-norm_")
    assert c["method"] == "dpo-norm"
    for control in ("permute", "mean", "matched_random"):
        c, m = cfg(f"is-dpo_b0.1_lr0.002_adamw_is_control={control}")
        assert c["method"] == "is-dpo" and c["loss"]["is_control"] == control
        if control == "mean":
            assert all(r["is/ess"] == pytest.approx(1.0, abs=1e-6) for r in m if "loss" in r)
    for name, run in runs.items():
        c = yaml.safe_load((run / "config.yaml").read_text())
        steps = [r for r in rundir.metrics(run) if "loss" in r]
        assert c["log_update_norm"] is True and steps and all(r["update_norm"] >= 0 for r in steps), name
        assert steps[-1]["update_norm"] > 0, name  # after the warmup's first step (lr 0) the policy moves
    md = (out / "report.md").read_text()
    assert "## IS-DPO vs the mitigations" in md and "## IS-weight controls: what IS-DPO's weights do" in md
    controls = _read_csv(out / "csv" / "controls.csv")
    assert {r["name"] for r in controls} == {"dpo", "is-dpo", "is-dpo [permute]", "is-dpo [mean]",
                                             "is-dpo [matched_random]"}


def test_a_cached_stage_shows_as_done_not_negative(capsys):
    """A cached stage reports only its end (done = total = -1): the bar reads 1/1, never -1/-1 or a negative
    rate; a stage with progress ends at its own total."""
    from isdaa.cli.lab import _Bars

    bars = _Bars(True)
    bars("sft", -1, -1, None)
    bars("sweep", 3, 10, None)
    bars("sweep", -1, -1, None)
    bars.close()
    err = capsys.readouterr().err
    assert "-1/-1" not in err and "it/s" in err and not re.search(r"-\d[\d.]*it/s", err)
    assert "1/1" in err and "10/10" in err
