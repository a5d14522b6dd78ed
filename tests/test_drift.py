"""isdaa.drift (pure): the alarm rule, crossing steps, golden events and leads, against hand-computed
numbers; the stop_on_drift config block and the callback on a scripted signal (no model)."""

import math

import pytest

from isdaa import drift
from isdaa.config import DriftStopConfig, load_config
from isdaa.train.callbacks import TrainContext
from isdaa.train.drift_stop import DriftStop, drift_callbacks


def test_alarm_step_smoothing_and_patience_by_hand():
    """values 0, -1, ..., -5 at steps 10..60; trailing means over 3 checks: 0, -0.5, -1, -2, -3, -4.
    Threshold -2.5: -3 (step 50) is the first smoothed value below; patience 2 needs -4 too (step 60)."""
    steps, values = [10, 20, 30, 40, 50, 60], [0.0, -1.0, -2.0, -3.0, -4.0, -5.0]
    assert drift.alarm_step(steps, values, -2.5, smoothing=3, patience=1) == (50, -3.0)
    assert drift.alarm_step(steps, values, -2.5, smoothing=3, patience=2) == (60, -4.0)
    assert drift.alarm_step(steps, values, -2.5, smoothing=1, patience=1) == (40, -3.0)  # raw: -3 at step 40
    assert drift.alarm_step(steps, values, -2.0, smoothing=3) == (50, -3.0)  # -2 is not strictly below -2
    never = drift.alarm_step(steps, values, -9.0, smoothing=3)
    assert never[0] is None and math.isnan(never[1])


def test_patience_streak_resets_and_above_direction():
    # below -1 at checks 2 and 4 but never twice in a row: patience 2 never fires
    assert drift.alarm_step([1, 2, 3, 4, 5], [0, -2, 0, -2, 0], -1.0, patience=2)[0] is None
    # clip fraction 0, .1, .3, .2, .5; means of 2: 0, .05, .2, .25, .35; "above" 0.25 (strict) at step 5
    assert drift.alarm_step([1, 2, 3, 4, 5], [0, 0.1, 0.3, 0.2, 0.5], 0.25, "above", smoothing=2) == (5, 0.35)


def test_ratio_at_one_never_fires():
    """A run whose ratios stay at 1 (float noise around log ratio 0, ESS 1, no clipping)."""
    noise = [((-1) ** i) * 1e-7 * (i % 5) for i in range(500)]
    steps = list(range(1, 501))
    assert drift.alarm_step(steps, noise, -0.01, smoothing=1)[0] is None
    assert drift.alarm_step(steps, [1.0 + n for n in noise], 0.99, smoothing=10)[0] is None
    assert drift.alarm_step(steps, [1.0] * 500, 0.999999)[0] is None
    assert drift.alarm_step(steps, [0.0] * 500, 0.01, "above")[0] is None
    assert drift.is_constant([1.0] * 5) and not drift.is_constant(noise)


def test_nan_is_not_a_check_and_inf_dominates():
    rule = drift.DriftRule(-2.0, smoothing=1, patience=2)
    assert [rule.update(v) for v in (-3.0, math.nan, -3.0)] == [False, False, True]  # NaN skipped, streak kept
    rule = drift.DriftRule(0.5, smoothing=2)  # drift/ratio_mean overflowed to inf: the window's mean is inf
    assert [rule.update(v) for v in (1.0, math.inf, 0.1, 0.1)] == [False, False, False, True]
    assert rule.fired and not rule.update(0.0)  # fires once
    with pytest.raises(ValueError, match="direction"):
        drift.DriftRule(0.0, "sideways")


def test_golden_events_lead_and_interpolation_by_hand():
    """Win rates 0.50 0.60 0.62 0.58 0.56 at steps 0..40: peak 0.62 at 20; fallen by 0.05 (<= 0.57)
    first at step 40 (0.58 is not). An alarm at 30 lags the peak by 10 and leads the decline by 10."""
    ev = drift.golden_events([0, 10, 20, 30, 40], [0.50, 0.60, 0.62, 0.58, 0.56], drop=0.05)
    assert (ev.peak_step, ev.peak_win_rate, ev.decline_step) == (20, 0.62, 40)
    assert (ev.final_step, ev.final_win_rate) == (40, 0.56)
    assert drift.lead(30, ev.peak_step) == -10 and drift.lead(30, ev.decline_step) == 10
    assert drift.lead(None, 40) is None and drift.lead(30, None) is None
    assert drift.golden_events([0, 10, 20], [0.6, 0.6, 0.59]).peak_step == 0  # first maximum; no decline
    assert drift.golden_events([0, 10, 20], [0.6, 0.6, 0.59]).decline_step is None
    # smoothed over 3 checkpoints (2 at the ends): .55 .5733 .6 .5867 .57; peak .6 at 20; nothing after it
    # is <= .55: no decline. With a last value of .40: .5333 at 30 (<= .55) is the decline.
    ev = drift.golden_events([0, 10, 20, 30, 40], [0.50, 0.60, 0.62, 0.58, 0.56], window=3)
    assert (ev.peak_step, ev.decline_step) == (20, None) and ev.peak_win_rate == pytest.approx(0.6)
    ev = drift.golden_events([0, 10, 20, 30, 40], [0.50, 0.60, 0.62, 0.58, 0.40], window=3)
    assert ev.decline_step == 30 and ev.final_win_rate == 0.40  # final: raw
    assert drift.centered_mean([1.0, 2.0, 6.0], 3) == [1.5, 3.0, 4.0]
    with pytest.raises(ValueError, match="odd"):
        drift.centered_mean([1.0], 2)
    steps, wr = [0, 10, 20, 30, 40], [0.50, 0.60, 0.62, 0.58, 0.56]
    assert drift.win_rate_at(25, steps, wr) == pytest.approx(0.60)  # halfway between 0.62 and 0.58
    assert drift.win_rate_at(None, steps, wr) == 0.56 and drift.win_rate_at(99, steps, wr) == 0.56
    assert drift.win_rate_at(20, steps, wr) == 0.62


def test_series_reads_records_and_names_bad_ones():
    records = [{"step": 2, "drift/log_ratio_mean": -0.5}, {"step": 1, "drift/log_ratio_mean": 0.0},
               {"step": 2, "eval/loss": 0.3}, {"step": 3, "drift/log_ratio_mean": None}]
    steps, values = drift.series(records, "drift/log_ratio_mean")
    assert steps == [1, 2, 3] and values[:2] == [0.0, -0.5] and math.isnan(values[2])
    steps, values = drift.series([{"step": 0, "ratio_mean_log": math.log(0.25)}], "probe/ratio_mean")
    assert values == [pytest.approx(0.25)]  # the probe stores the log of the mean ratio
    with pytest.raises(ValueError, match=r"metrics.jsonl: record 1 \(step 4\), field 'is/ess'"):
        drift.series([{"step": 4, "is/ess": "high"}], "is/ess", where="metrics.jsonl")
    with pytest.raises(ValueError, match="record 1 has no integer 'step'"):
        drift.series([{"is/ess": 1.0}], "is/ess")


def test_split_seeds():
    assert drift.split_seeds([2, 0, 1]) == ([0], [1, 2])
    assert drift.split_seeds([0, 1, 2, 3]) == ([0, 1], [2, 3])
    assert drift.split_seeds([5]) == ([5], [])


def test_config_block_validation():
    cfg = load_config({"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}, "output_dir": "o",
                       "method": "is-dpo", "stop_on_drift": {"signal": "is/ess", "threshold": 0.5}}, kind="pref")
    assert isinstance(cfg.stop_on_drift, DriftStopConfig) and cfg.stop_on_drift.threshold == 0.5
    assert cfg.stop_on_drift.action == "stop" and cfg.stop_on_drift.smoothing == 10
    with pytest.raises(ValueError, match=r"stop_on_drift.threshold for is/ess must be .* in \(0, 1\)"):
        DriftStopConfig(signal="is/ess", threshold=1.5)
    with pytest.raises(ValueError, match="did you mean 'is/ess'"):
        DriftStopConfig(signal="is/esss", threshold=0.5)
    with pytest.raises(ValueError, match="stop_on_drift.action"):
        DriftStopConfig(action="pause")
    with pytest.raises(ValueError, match="smoothing and patience"):
        DriftStopConfig(patience=0)
    with pytest.raises(ValueError, match="signal"):
        drift.check_threshold("nope", 0.1)
    # a signal that is constant for a non-IS method could never fire: refused before training
    dpo = load_config({"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"}, "output_dir": "o",
                       "method": "dpo", "stop_on_drift": {"signal": "is/ess", "threshold": 0.5}}, kind="pref")
    with pytest.raises(ValueError, match="constant for method 'dpo'"):
        drift_callbacks(dpo)
    assert drift_callbacks(load_config({"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"},
                                        "output_dir": "o"}, kind="pref")) == []


def _ctx(step, value):
    return TrainContext(step=step, examples_seen=4 * step, total_steps=100, epoch=0.0, model=None,
                        tokenizer=None, cfg=None, output_dir="unused", _metrics={"drift/log_ratio_mean": value})


def test_callback_on_a_scripted_signal():
    """Checked every 2 steps (steps 2, 4, ...): values -0.3 * step. Smoothing 2, threshold -2, patience 1:
    checks at 2,4,6,8,10 see -0.6,-1.2,-1.8,-2.4,-3.0; means of 2: -0.6,-0.9,-1.5,-2.1 -> step 8."""
    cb = DriftStop(DriftStopConfig(threshold=-2.0, smoothing=2, every=2), logging_steps=1)
    stops = {}
    for step in range(1, 13):
        ctx = _ctx(step, -0.3 * step)
        cb.on_step_end(ctx)
        if ctx.stop_reason:
            stops[step] = ctx.stop_reason
    assert list(stops) == [8] and "-2.1 < -2" in stops[8] and "at step 8" in stops[8]
    summary = {"status": "stopped"}
    end = TrainContext(step=8, examples_seen=32, total_steps=100, epoch=0.0, model=None, tokenizer=None,
                       cfg=None, output_dir="unused", is_main_process=False, summary=summary)
    cb.on_train_end(end)
    block = summary["stop_on_drift"]
    assert block["fired"] and block["step"] == 8 and block["smoothed"] == pytest.approx(-2.1)
    assert block["checks"] == 4 and block["every"] == 2


def test_resumed_run_keeps_its_best_by_drift(tmp_path):
    """A keep-best alarm that fired before a resume is not raised again (best_by_drift/ is kept), and the
    summary reports the recorded alarm."""
    best = tmp_path / "best_by_drift"
    best.mkdir()
    (best / "trainer_state.json").write_text('{"step": 7, "stop_on_drift": {"step": 7, "smoothed": -1.375}}')
    cb = DriftStop(DriftStopConfig(threshold=-1.0, smoothing=1, action="keep-best"), logging_steps=1)
    for step in range(8, 12):
        ctx = _ctx(step, -5.0)
        ctx.output_dir = str(tmp_path)
        cb.on_step_end(ctx)  # would fire (and save) at step 8 without the recorded alarm
        assert ctx.stop_reason is None and not ctx.logged
    summary = {}
    cb.on_train_end(TrainContext(step=11, examples_seen=44, total_steps=100, epoch=0.0, model=None, tokenizer=None,
                                 cfg=None, output_dir=str(tmp_path), is_main_process=False, summary=summary))
    assert summary["stop_on_drift"]["fired"] and summary["stop_on_drift"]["step"] == 7
