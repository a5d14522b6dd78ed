"""stop_on_drift in the real trainer: a synthetic drifting run stops at the hand-computed step, a run
whose ratios stay at 1 never stops, keep-best saves the alarm step's policy, and 1 and 2 processes
(torchrun, gloo on CPU) take the same decision at the same step."""

import json
import runpy

import pytest
from safetensors.torch import load_file

from isdaa.io import read_jsonl

# The run, as a script so that torchrun can launch it. Its batch_source scores the 4 pairs of each step
# with the CURRENT policy and writes behavior log-probs that put the joint log-ratio
# log pi_theta(c, r) / pi_b(c, r) of pairs 0 and 1 at exactly -2 * SLOPE * s (s = 0-based step) and
# that of pairs 2 and 3 at 0. The batch mean (drift/log_ratio_mean) is -SLOPE * s; with 2 processes,
# process 0 alone sees -2 * SLOPE * s and process 1 alone sees 0, so only the reduced signal is right.
SCRIPT = r'''
import json, os, sys
import torch
from isdaa.config import load_config
from isdaa.data import collate_pref, tokenize_pref
from isdaa.logprobs import causal_lm_logps
from isdaa.api import train

PAIRS = [{"prompt": f"w{i} w{i + 1}", "chosen": f"good yes w{i}", "rejected": f"bad no w{i + 2}"} for i in range(4)]


class Crash(Exception):
    pass


def run(model_dir, out, slope, action="stop", save_steps=None, crash_at=None, resume=False):
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))  # torchrun's
    per = len(PAIRS) // world
    mine = range(rank * per, (rank + 1) * per)

    def source(step, model, tokenizer):
        rows = [PAIRS[i] for i in mine]
        batch = collate_pref(tokenize_pref(rows, tokenizer, 32, 16, drop_identical=False), tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logps = causal_lm_logps(logits, batch["input_ids"], batch["response_mask"]).tolist()
        n = len(rows)
        out_rows = []
        for k, i in enumerate(mine):
            shift = slope * step if i < 2 else 0.0  # per response: the pair's joint log-ratio is -2 * shift
            out_rows.append({**PAIRS[i], "chosen_logps": logps[k] + shift, "rejected_logps": logps[n + k] + shift})
        return out_rows

    cfg = load_config({
        "model": {"name_or_path": model_dir},
        "data": {"train": "unused.jsonl", "max_length": 32, "max_prompt_length": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 0}, "output_dir": out, "max_steps": 8, "batch_size": 4,
        "micro_batch_size": 2, "logging_steps": 1, "progress": False, "num_threads": 1, "mixed_precision": "no",
        "method": "dpo", "beta": 0.1, "ref_logps": "on_the_fly", "save_steps": save_steps,
        "stop_on_drift": {"signal": "drift/log_ratio_mean", "threshold": -1.0, "smoothing": 2, "patience": 2,
                          "action": action},
    }, kind="pref")
    callbacks = []
    if crash_at is not None:  # dies inside step crash_at, before its record and checkpoint (like kill -9)
        from isdaa.train.callbacks import TrainerCallback

        class CrashAt(TrainerCallback):
            def on_step_end(self, ctx):
                if ctx.step == crash_at:
                    raise Crash(f"killed at step {crash_at}")

        callbacks.append(CrashAt())
    return train(cfg, callbacks=callbacks, batch_source=source, resume=resume)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], float(sys.argv[3]))
'''


@pytest.fixture()
def script(tmp_path):
    path = tmp_path / "drift_run.py"
    path.write_text(SCRIPT)
    return path


def _run(script, *args, **kw):
    return runpy.run_path(str(script))["run"](*args, **kw)


def _expected_smoothed():
    """Logged drift at optimizer step t is -0.25 (t - 1): 0, -.25, -.5, -.75, -1, -1.25, -1.5. Means of
    the last 2: 0, -.125, -.375, -.625, -.875, -1.125, -1.375. Below -1 at steps 6 and 7: patience 2 ->
    the alarm fires at step 7 with -1.375."""
    values = [-0.25 * (t - 1) for t in range(1, 8)]
    return [(values[max(0, i - 1)] + values[i]) / 2 if i else values[0] for i in range(7)]


def test_drifting_run_stops_at_the_hand_computed_step(tiny_dir, tmp_path, script):
    summary = _run(script, str(tiny_dir), str(tmp_path / "drift"), 0.25)
    assert summary["status"] == "stopped" and summary["step"] == 7
    block = summary["stop_on_drift"]
    assert block["fired"] and block["step"] == 7 and block["smoothed"] == pytest.approx(-1.375, abs=1e-4)
    assert "stop_on_drift: drift/log_ratio_mean" in summary["stop_reason"]
    on_disk = json.loads((tmp_path / "drift" / "summary.json").read_text())
    assert on_disk["stop_on_drift"] == block and on_disk["status"] == "stopped"
    rows = read_jsonl(tmp_path / "drift" / "metrics.jsonl")
    assert [r["drift/log_ratio_mean"] for r in rows] == pytest.approx([-0.25 * (t - 1) for t in range(1, 8)],
                                                                      abs=1e-4)
    assert [r["drift_stop/smoothed"] for r in rows] == pytest.approx(_expected_smoothed(), abs=1e-4)


def test_resume_fires_at_the_same_step_as_an_uninterrupted_run(tiny_dir, tmp_path, script):
    """Killed inside step 7 with a checkpoint at step 6: the smoothed value at 6 (-1.125) is the first one
    below -1 (patience 2). The resumed run replays the checks of steps 1-6 from metrics.jsonl, so step 7's
    check (-1.375) is the second in a row and fires at 7, like the uninterrupted run. (Restarting the window
    at the resume, step 7 alone would read -1.5 with a streak of 1 and fire at step 8.)"""
    out = str(tmp_path / "killed")
    with pytest.raises(Exception, match="killed at step 7"):
        _run(script, str(tiny_dir), out, 0.25, save_steps=6, crash_at=7)
    summary = _run(script, str(tiny_dir), out, 0.25, save_steps=6, resume=True)
    assert summary["resumed_from_step"] == 6
    assert summary["status"] == "stopped" and summary["step"] == 7
    block = summary["stop_on_drift"]
    assert block["fired"] and block["step"] == 7 and block["smoothed"] == pytest.approx(-1.375, abs=1e-4)
    assert block["checks"] == 7  # 6 replayed + 1
    rows = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 8))
    assert [r["drift_stop/smoothed"] for r in rows] == pytest.approx(_expected_smoothed(), abs=1e-4)


def test_ratio_at_one_never_stops(tiny_dir, tmp_path, script):
    summary = _run(script, str(tiny_dir), str(tmp_path / "flat"), 0.0)
    assert summary["status"] == "finished" and summary["step"] == 8
    assert summary["stop_on_drift"]["fired"] is False and summary["stop_on_drift"]["checks"] == 8
    rows = read_jsonl(tmp_path / "flat" / "metrics.jsonl")
    assert max(abs(r["drift/log_ratio_mean"]) for r in rows) < 1e-4  # on-policy pairs: ratio 1


def test_keep_best_saves_the_alarm_step_and_trains_on(tiny_dir, tmp_path, script):
    out = tmp_path / "keep"
    summary = _run(script, str(tiny_dir), str(out), 0.25, action="keep-best", save_steps=7)
    assert summary["status"] == "finished" and summary["step"] == 8
    block = summary["stop_on_drift"]
    assert block["fired"] and block["step"] == 7 and block["best_by_drift"] == str(out / "best_by_drift")
    state = json.loads((out / "best_by_drift" / "trainer_state.json").read_text())
    assert state["step"] == 7 and state["stop_on_drift"]["step"] == 7
    kept = load_file(out / "best_by_drift" / "model.safetensors")
    at_7 = load_file(out / "checkpoint-7" / "model.safetensors")  # the schedule's own save
    final = load_file(out / "model.safetensors")                  # the final model at the output root
    assert all((kept[k] == at_7[k]).all() for k in at_7)
    assert any((kept[k] != final[k]).any() for k in final)


@pytest.mark.slow
def test_two_processes_take_the_same_decision(tiny_dir, tmp_path, script, torchrun):
    """Process 1 alone sees log-ratio 0 (it would never stop); the loop's reduce and the callback's
    broadcast make both processes stop at step 7, like the single-process run."""
    one = _run(script, str(tiny_dir), str(tmp_path / "one"), 0.25)
    torchrun([script, tiny_dir, tmp_path / "two", "0.25"])
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["status"] == "stopped" and two["step"] == one["step"] == 7
    for k in ("fired", "step", "checks"):
        assert two["stop_on_drift"][k] == one["stop_on_drift"][k]
    assert two["stop_on_drift"]["smoothed"] == pytest.approx(one["stop_on_drift"]["smoothed"], abs=1e-4)
    rows = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert len(rows) == 7  # one writer (process 0 of 2); two single-process runs would both append
    assert [r["drift_stop/smoothed"] for r in rows] == pytest.approx(_expected_smoothed(), abs=1e-4)
