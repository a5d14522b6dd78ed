"""kill -9 during `isdaa train`, then the same command with --resume, until it finishes: nothing
finished is redone, nothing is lost, and on CPU the metrics and final weights equal those of an
uninterrupted run. Kill points: shortly after the first checkpoint, in the middle of a checkpoint
write (its temporary folder exists), and at a random later moment."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from isdaa.api import train
from isdaa.config import load_config, to_dict
from isdaa.io import read_jsonl

VOLATILE = {"tokens_per_s", "elapsed_s"}
STEPS = 24


def _records(out):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_jsonl(out / "metrics.jsonl")]


def _checkpoints(out):
    return sorted((p.name for p in out.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))


def _wait_for(cond, proc, timeout=60.0):
    """Poll `cond()` every ~1 ms while `proc` runs; True once it holds, False when proc ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    raise TimeoutError("the training subprocess neither reached the kill point nor ended")


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_dir, tmp_path):
    rng = random.Random(0)
    rows = [{"prompt": f"w{i} w{i + 3}", "chosen": f"good yes w{i}", "rejected": f"bad no w{i}"} for i in range(32)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"model": {"name_or_path": str(tiny_dir)},
            "data": {"train": str(tmp_path / "train.jsonl"), "max_length": 32, "max_prompt_length": 16},
            "optim": {"lr": 3e-3, "warmup_steps": 2}, "method": "is-dpo", "batch_size": 4, "micro_batch_size": 2,
            "max_steps": STEPS, "save_steps": 1, "logging_steps": 1, "progress": False, "num_threads": 1,
            "mixed_precision": "no", "seed": 3, "ref_cache_dir": str(tmp_path / "cache")}
    reference = load_config({**base, "output_dir": str(tmp_path / "reference")})
    train(reference)

    out = tmp_path / "killed"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**to_dict(reference), "output_dir": str(out)}))
    cmd = [sys.executable, "-m", "isdaa.cli", "train", "pref", "--config", str(tmp_path / "c.yaml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps_done = lambda: len(_checkpoints(out))
    kill_points = [
        ("after the first checkpoint", lambda: steps_done() >= 1, lambda: rng.uniform(0.0, 0.05)),
        ("during a checkpoint write", lambda: any(out.glob(".checkpoint-*.tmp")), lambda: 0.0),
        ("at a random later moment", None, lambda: rng.uniform(0.0, 0.1)),
    ]
    landed = []
    for i, (name, cond, delay) in enumerate(kill_points):
        before = steps_done()
        proc = subprocess.Popen(cmd + (["--resume"] if i else []), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            if _wait_for(cond or (lambda b=before: steps_done() > b + 1), proc):
                time.sleep(delay())
                proc.send_signal(signal.SIGKILL)
        finally:
            _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err[-2000:]
        landed.append((name, proc.returncode == -signal.SIGKILL, before, steps_done()))
    final = subprocess.run(cmd + ["--resume"], check=False, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-2000:]
    print("kill points (name, killed, checkpoints before, after):", landed)
    assert sum(killed for _, killed, _, _ in landed) >= 2, landed   # the kills did land mid-run

    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == STEPS
    assert _records(out) == _records(tmp_path / "reference")          # every step once, same values
    wr, wk = load_file(tmp_path / "reference" / "model.safetensors"), load_file(out / "model.safetensors")
    assert wr.keys() == wk.keys() and all(torch.equal(wr[k], wk[k]) for k in wr)
    assert _checkpoints(out) == [f"checkpoint-{s}" for s in range(1, STEPS + 1)]
    assert not list(out.glob(".*.tmp"))
    history = [json.loads((d / "trainer_state.json").read_text())["log_history"] for d in (tmp_path / "reference", out)]
    strip = [[{k: v for k, v in e.items() if k not in VOLATILE and not k.startswith("train_")} for e in h]
             for h in history]
    assert strip[0] == strip[1] and [e["step"] for e in history[1]] == [*range(1, STEPS + 1), STEPS]


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
