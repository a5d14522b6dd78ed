"""The lab's drift analysis on a hand-made lab folder (no training): crossing steps, leads and the
held-out evaluation against numbers computed by hand in the docstrings."""

import json
import math

import pytest

from isdaa.lab import drift as lab_drift

STEPS = [0, 20, 40, 60, 80, 100]
# centered means of 3 (2 at the ends): .55 .5833 .6233 .6167 .5833 .565: peak .6233 at 40, first <= .5733
# after it at 100 (.5833 at 80 is not)
PEAKED = [0.50, 0.60, 0.65, 0.62, 0.58, 0.55]
RISING = [0.50, 0.52, 0.54, 0.56, 0.58, 0.60]  # no decline


def _write_run(root, method, seed, slope, win_rates, beta=0.1):
    """A finished lab run: batch log-ratio -slope * t at every step t = 1..100 (is-dpo: ESS 1 - 0.005 t,
    other methods 1), probe log-ratio -0.05 * step at the checkpoints."""
    run_id = f"{method}_b{beta:g}_s{seed}"
    d = root / "runs" / run_id
    (d / "eval").mkdir(parents=True)
    spec = {"method": method, "beta": beta, "seed": seed, "lr": 0.002, "optimizer": "adamw", "options": {},
            "group": "main", "run_id": run_id, "label": method}
    (d / "lab_spec.json").write_text(json.dumps(spec))
    (d / "summary.json").write_text(json.dumps({"status": "finished", "total_steps": 100}))
    for step, wr in zip(STEPS, win_rates):
        name = "reference.json" if step == 0 else f"step-{step:08d}.json"
        (d / "eval" / name).write_text(json.dumps({"step": step, "win_rate": wr}))
    ess = (lambda t: 1 - 0.005 * t) if method.startswith("is-") else (lambda t: 1.0)
    records = [{"step": t, "drift/log_ratio_mean": -slope * t, "drift/ratio_mean": math.exp(-slope * t),
                "is/ess": ess(t), "is/clip_frac": 0.0} for t in range(1, 101)]
    records.insert(50, {"step": 50, "eval/loss": 0.1})  # an eval-only record: not part of any series
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    probe = [{"step": s, "log_ratio_mean": -0.05 * s, "ratio_mean_log": -0.05 * s, "ess": 1.0 - 0.004 * s,
              "clip_frac": 0.0} for s in STEPS]
    (d / "ratios.jsonl").write_text("".join(json.dumps(r) + "\n" for r in probe))
    (d / "lab_done.json").write_text("{}")
    return run_id


@pytest.fixture()
def lab(tmp_path):
    (tmp_path / "lab.json").write_text(json.dumps({"preset": {"overopt_drop": 0.05}}))
    for method in ("dpo", "is-dpo"):
        _write_run(tmp_path, method, 0, 0.05, PEAKED)      # the selection seed drifts slowly
        for seed in (1, 2):
            _write_run(tmp_path, method, seed, 0.10, PEAKED)  # the held-out seeds twice as fast
    _write_run(tmp_path, "ipo", 0, 0.05, RISING)
    return tmp_path


def _row(rows, run_id, signal, threshold):
    (r,) = [r for r in rows if r["run_id"] == run_id and r["signal"] == signal and r["threshold"] == threshold]
    return r


def test_crossing_steps_and_leads_by_hand(lab):
    """Batch log-ratio -0.05 t, trailing mean of 10 (t >= 10): -0.05 (t - 4.5). Below -2 first at t = 45
    (-2.025; t = 44 gives -1.975); below -0.5 at t = 15. Peak at 40, decline at 100 (PEAKED): the -2 alarm
    lags the peak by 5 and leads the decline by 55. The probe (-0.05 step, raw) is below -2 first at 60."""
    rows = lab_drift.leadlag_rows(lab_drift.load_runs(lab), drop=0.05)
    r = _row(rows, "dpo_b0.1_s0", "drift/log_ratio_mean", -2.0)
    assert (r["alarm_step"], r["peak_step"], r["decline_step"]) == (45, 40, 100)
    assert (r["lead_peak"], r["lead_decline"]) == (-5, 55)
    assert r["peak_win_rate"] == pytest.approx((0.60 + 0.65 + 0.62) / 3)
    assert r["smoothed_at_alarm"] == pytest.approx(-2.025)
    assert r["win_rate_at_alarm"] == pytest.approx(0.65 - 0.03 * 5 / 20)  # between 0.65 (40) and 0.62 (60)
    assert _row(rows, "dpo_b0.1_s0", "drift/log_ratio_mean", -0.5)["alarm_step"] == 15
    assert _row(rows, "dpo_b0.1_s0", "drift/log_ratio_mean", -8.0)["alarm_step"] is None  # min -4.775
    assert _row(rows, "dpo_b0.1_s1", "drift/log_ratio_mean", -2.0)["alarm_step"] == 25  # -0.1 (t - 4.5)
    assert _row(rows, "dpo_b0.1_s0", "probe/log_ratio_mean", -2.0)["alarm_step"] == 60  # -2.0 at 40 is not below
    # ESS: constant 1 for DPO (no alarm, flagged); 1 - 0.005 (t - 4.5) < 0.8 first at t = 45 for IS-DPO
    assert _row(rows, "dpo_b0.1_s0", "is/ess", 0.8)["constant"] is True
    assert _row(rows, "is-dpo_b0.1_s0", "is/ess", 0.8)["alarm_step"] == 45


def test_threshold_table_counts(lab):
    """At drift/log_ratio_mean < -2: the 6 DPO/IS-DPO runs decline at 100 and alarm at 45 or 25 (early);
    the rising IPO run never declines and alarms at 45 (a false alarm)."""
    rows = lab_drift.threshold_rows(lab_drift.leadlag_rows(lab_drift.load_runs(lab), drop=0.05))
    (r,) = [r for r in rows if r["signal"] == "drift/log_ratio_mean" and r["threshold"] == -2.0]
    assert (r["runs"], r["declined"], r["early"], r["late"], r["missed"]) == (7, 6, 6, 0, 0)
    assert (r["no_decline"], r["false_alarms"]) == (1, 1)
    assert r["median_lead_fraction"] == pytest.approx((100 - 25) / 100)  # 4 runs lead 75, 2 lead 55
    # peak at 40: the alarms at 25 come before it (4 runs, lead 15), those at 45 after it (2 runs)
    assert r["before_peak"] == 4 and r["median_lead_peak_fraction"] == pytest.approx(0.15)
    assert lab_drift.predicts(r) is False  # 1 false alarm in 1 run without a decline > 1/3
    (ess,) = [r for r in rows if r["signal"] == "is/ess" and r["threshold"] == 0.8]
    assert ess["runs"] == 3  # the IS-DPO runs only: constant for DPO and IPO


def test_heldout_selects_on_seed_0_and_reports_seeds_1_2(lab):
    """Selection (seed 0, slope 0.05): alarms at 15 / 25 / 45 / 85 / never for -0.5 / -1 / -2 / -4 / -8
    (-0.25 at step 9 or 10: its mean is -0.25 up to rounding); interpolated win rates 0.575 / 0.6125 /
    0.6425 / 0.5725 / 0.55 (-0.25: about 0.55) -> -2 is chosen. Held out (slope 0.1):
    -0.1 (t - 4.5) < -2 at t = 25 -> 0.6125; no stop 0.55; oracle 0.65."""
    sel, held, why_not = lab_drift.heldout(lab_drift.load_runs(lab))
    assert why_not is None
    (s,) = [r for r in sel if r["signal"] == "drift/log_ratio_mean"]
    assert s["threshold"] == -2.0 and s["selection_seeds"] == "0"
    assert s["selection_rule_win_rate"] == pytest.approx(0.6425) and s["selection_no_stop_win_rate"] == 0.55
    (h,) = [r for r in held if r["signal"] == "drift/log_ratio_mean" and r["method"] == "dpo"]
    assert h["heldout_seeds"] == "1 2" and h["n"] == 2 and h["fired"] == 2 and h["beta"] == 0.1
    assert h["regime"] == "main, adamw lr 0.002, beta 0.1"
    assert (h["no_stop"], h["oracle"]) == (pytest.approx(0.55), pytest.approx(0.65))
    assert h["rule"] == pytest.approx(0.6125) and h["delta"] == pytest.approx(0.0625)
    assert h["alarm_fraction"] == pytest.approx(0.25)
    # is/ess never varies for DPO: its rule cannot fire there (rule = no stop)
    (e,) = [r for r in held if r["signal"] == "is/ess" and r["method"] == "dpo"]
    assert e["fired"] == 0 and e["rule"] == e["no_stop"]


def test_drift_section_returns_tables_figures_and_markdown(lab):
    sec = lab_drift.drift_section(lab)
    md, figures, tables = sec.markdown, sec.figures, sec.tables
    assert set(tables) == {"drift_signals", "drift_leadlag", "drift_thresholds", "drift_selection", "drift_heldout"}
    assert all(t.rows for name, t in tables.items() if name != "drift_heldout") and tables["drift_heldout"].rows
    assert [p.name for p in figures] == ["drift_main_adamw_lr_0.002_beta_0.1.png"] and figures[0].exists()
    assert "## Golden-free drift alarm" in md and "Held-out evaluation" in md
    assert "7 runs; 6 of them" in md and "chosen threshold" in md
    assert "`stop_on_drift: {signal: drift/" in md  # the selected trainer-side rule, as a config line


def test_one_seed_reports_that_nothing_is_held_out(tmp_path):
    _write_run(tmp_path, "dpo", 0, 0.05, PEAKED)
    sec = lab_drift.drift_section(tmp_path)
    assert "needs at least 2 seeds" in sec.markdown and sec.tables["drift_heldout"].rows == []


def test_bad_file_is_named(lab):
    bad = lab / "runs" / "dpo_b0.1_s0" / "metrics.jsonl"
    bad.write_text('{"step": 1, "is/ess": "x"}\n')
    with pytest.raises(ValueError, match=r"dpo_b0.1_s0/metrics.jsonl: record 1 \(step 1\), field 'is/ess'"):
        lab_drift.load_runs(lab)


def test_regime_names_the_runs_own_pairs_and_schedule():
    """The regimes preset varies steps (n_pairs) and schedule per run: they are part of the regime."""
    spec = {"group": "regimes", "optimizer": "adamw", "lr": 5e-4, "beta": 0.01, "n_pairs": 12400,
            "scheduler": None, "warmup_ratio": None}
    assert lab_drift.RunData(spec, 100, [0], [0.5]).regime == "regimes, adamw lr 0.0005, beta 0.01, 12400 pairs"
    spec.update(n_pairs=None, scheduler="constant", warmup_ratio=0.1)
    assert lab_drift.RunData(spec, 100, [0], [0.5]).regime == \
        "regimes, adamw lr 0.0005, beta 0.01, constant, 0.1 warmup"


def test_sampled_kl_is_a_signal_and_unlogged_signals_are_not_selected(lab):
    """sample/kl: the evaluator's k1 at each checkpoint (not pi_ref's step 0), alarm when above the
    threshold (smoothing 1). With KL = 0.05 * step on the runs of seed 1 only: > 2 first at step 60 (3.0; 2.0
    at 40 is not above). The held-out selection needs a signal on every pooled run: sample/kl is missing on
    seeds 0 and 2, so no threshold is chosen for it; drift_signals counts the checks each run logged."""
    for run_id in ("dpo_b0.1_s1", "is-dpo_b0.1_s1"):
        for path in (lab / "runs" / run_id / "eval").glob("*.json"):
            rec = json.loads(path.read_text())
            rec["kl_k1"] = 0.05 * rec["step"]
            path.write_text(json.dumps(rec))
    runs = {r.run_id: r for r in lab_drift.load_runs(lab)}
    assert runs["dpo_b0.1_s1"].signals["sample/kl"] == (STEPS[1:], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert "sample/kl" not in runs["dpo_b0.1_s0"].signals
    rows = lab_drift.leadlag_rows(list(runs.values()), 0.05)
    assert _row(rows, "dpo_b0.1_s1", "sample/kl", 2.0)["alarm_step"] == 60
    sel, held, _ = lab_drift.heldout(list(runs.values()))
    assert "sample/kl" not in {r["signal"] for r in sel} and "drift/log_ratio_mean" in {r["signal"] for r in sel}
    counts = {r["run_id"]: r for r in lab_drift.signal_rows(list(runs.values()))}
    assert counts["dpo_b0.1_s1"]["sample/kl"] == 5 and counts["dpo_b0.1_s0"]["sample/kl"] == 0
    assert counts["dpo_b0.1_s0"]["drift/log_ratio_mean"] == 100 and counts["dpo_b0.1_s0"]["probe/ess"] == 6
