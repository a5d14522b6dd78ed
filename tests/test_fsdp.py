"""FSDP on CPU: `accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2` (FSDP2,
`fully_shard`, gloo) through the real CLI, against the same run in one process: final weights, every logged
metric (training, the eval split, the live evaluator's KL / win rate and its samples), the stop_on_drift
keep-best save and the checkpoints; then kill / resume under FSDP against the uninterrupted FSDP run.

The FSDP run exercises, collectively on both processes: the stored-log-prob check on the training rows
(`reference.check_stored`), the reference pass on the eval split (`reference.compute`), the eval split
(`Task.evaluate`), the live evaluator (every process samples in lockstep: a sharded policy's forwards are
collective), the keep-best save from a callback, and full-state-dict saves (save_pretrained, safetensors).

Tolerance: 1e-6 absolute on weights, (rel 1e-4, abs 1e-5) on metrics. Both runs are float32 and see the
same global batch; only the order of float32 sums differs (one process sums 4 micro-batches' gradients in
one buffer; FSDP sums 2 per process, then reduce-scatters and averages; the gathered parameters feed the
same kernels at other addresses): relative differences of a few 1e-7 per gradient entry. The optimizer is
SGD with momentum, whose update is linear in the gradient, so weights differ by lr x that round-off
(measured 1.2e-7 after 4 steps at lr 0.5; AdamW's m / (sqrt(v) + eps) instead turns the round-off of a
near-zero gradient entry into an O(lr) difference: 1.2e-4 at lr 1e-2 on a 64-wide model, so it is no
equivalence test). Metrics measured < 2e-6 (torch 2.13, accelerate 1.16, transformers 5.25). The momentum
buffer is the optimizer state resume restores: the resumed FSDP run equals the uninterrupted one exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_train import make_cfg, pref_rows, write_jsonl

from isdaa.api import train
from isdaa.config import to_dict
from isdaa.io import read_jsonl

FSDP_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / "fsdp.yaml"
REWARD_MODULE = '''
def count_good(prompts, responses):
    return [float(r.split().count("good")) for r in responses]
'''
VOLATILE = {"tokens_per_s", "elapsed_s", "eval/seconds"}
NOT_POOLED: set[str] = set()  # every metric, eval/drift/ess included, is pooled over processes (loop.to_floats)
WEIGHT_ATOL, REL, ABS = 1e-6, 1e-4, 1e-5


def launch_fsdp(config: Path, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    """`accelerate launch` of `isdaa train pref` with the shipped FSDP config on 2 CPU processes (also on a
    machine with GPUs: none is visible to it)."""
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = os.pathsep.join(p for p in (str(workdir), os.environ.get("PYTHONPATH", "")) if p)  # the reward module
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_CONFIG), "--num_processes",
           "2", "--mixed_precision", "no", "--main_process_port", str(port), "-m", "isdaa.cli", "train", "pref",
           "--config", str(config), *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers (a hang fails here, not forever)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-4000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def write_config(cfg, path: Path, **changes) -> Path:
    d = to_dict(cfg)
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            d[section] = {**d[section], name: value}
        else:
            d[key] = value
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    """The same run in one process (in this process) and under FSDP with 2 processes."""
    tmp = tmp_path_factory.mktemp("fsdp")
    (tmp / "golden_for_test.py").write_text(REWARD_MODULE)
    eval_file = write_jsonl(tmp / "eval.jsonl", pref_rows(16, seed=5))
    over = dict(method="is-dpo", max_steps=4, batch_size=8, micro_batch_size=2, eval_steps=2, save_steps=2,
                resume_state_keep=2,  # step 2 stays resumable after step 4 is saved
                optim={"optimizer": "sgd", "sgd_momentum": 0.9, "lr": 0.5, "warmup_steps": 0}, data={"eval": eval_file},
                eval={"reward": "golden_for_test:count_good", "prompts": eval_file, "every": 2, "n_prompts": 4, "n": 2,
                      "max_new_tokens": 6, "kl_samples": 2, "batch_size": 4},
                stop_on_drift={"signal": "is/ess", "threshold": 0.94, "smoothing": 1, "patience": 1,
                               "action": "keep-best"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACCELERATE_USE_CPU", "true")  # on a GPU machine too
        mp.syspath_prepend(str(tmp))
        one = make_cfg(tiny_dir, tmp, "one", rows=pref_rows(64), **over)
        train(one)
    # the FSDP run's training rows carry the reference log-probs the one-process run computed: the stored-log-prob
    # check recomputes a sample of them under FSDP; the eval split has none: its reference pass runs under FSDP
    cache = [torch.load(f, weights_only=True) for f in sorted(Path(one.ref_cache_dir).glob("*.pt"))]
    ref = next(c for c in cache if len(c["ref_chosen_logps"]) == 64)
    rows = [{**r, "ref_chosen_logps": c, "ref_rejected_logps": j} for r, c, j in
            zip(pref_rows(64), ref["ref_chosen_logps"].tolist(), ref["ref_rejected_logps"].tolist())]
    config = write_config(one, tmp / "two.yaml", output_dir=str(tmp / "two"), ref_cache_dir=str(tmp / "cache-two"),
                          **{"data.train": write_jsonl(tmp / "two.jsonl", rows)})
    launch_fsdp(config, tmp)
    return tmp, Path(one.output_dir), tmp / "two", config


def _numeric(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in VOLATILE | NOT_POOLED}


def assert_same_weights(a: Path, b: Path, atol: float = WEIGHT_ATOL) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert diff <= atol, f"{a} vs {b}: max |dw| {diff}"
    return diff


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_process(runs):
    tmp, one, two, _ = runs
    assert_same_weights(one, two)  # the final models, at the output roots
    rows_one, rows_two = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [1, 2, 3, 4]
    for x, y in zip(rows_one, rows_two):
        x, y = _numeric(x), _numeric(y)
        if x["step"] == 1:  # policy = reference: margins are +-1e-7 round-off, their sign is noise
            for k in ("rewards/accuracies",):
                x.pop(k), y.pop(k)
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=REL, abs=ABS), (x["step"], k)
    evals = [r for r in rows_two if "eval/kl_k1" in r]  # the live evaluator ran under FSDP, at 2 and 4
    assert [r["step"] for r in evals] == [2, 4] and all("eval/win_rate" in r and "eval/loss" in r for r in evals)
    # every process sampled the same tokens as the one-process policy
    assert read_jsonl(two / "eval_generations.jsonl") == read_jsonl(one / "eval_generations.jsonl")
    # keep-best fired at the same step and saved a full model; checkpoints are full, loadable models
    s1, s2 = (json.loads((d / "summary.json").read_text())["stop_on_drift"] for d in (one, two))
    assert s2["fired"] and s2["step"] == s1["step"] > 2  # after the resume test's restart point
    assert_same_weights(one / "best_by_drift", two / "best_by_drift")
    for step in (2, 4):
        name = f"checkpoint-{step}"
        assert_same_weights(one / name, two / name)
        assert (two / name / "accelerate_state").is_dir() and not (two / name / "optimizer.pt").exists()
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(two, use_safetensors=True)
    final = load_file(two / "model.safetensors")
    assert all(torch.equal(p, final[k]) for k, p in loaded.state_dict().items())


@pytest.mark.slow
def test_fsdp_resume_equals_uninterrupted_and_unsharded_resume_is_refused(runs):
    """A kill right after the step-2 checkpoint (its later outputs removed), resumed under FSDP, ends with the
    uninterrupted FSDP run's weights and metrics exactly; a one-process resume of the FSDP checkpoint is refused."""
    tmp, _, two, config = runs
    res = tmp / "resumed"
    shutil.copytree(two, res)
    for name in ("model.safetensors", "summary.json", "checkpoint-4", "best_by_drift"):
        target = res / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    saved = yaml.safe_load((res / "config.yaml").read_text())
    (res / "config.yaml").write_text(yaml.safe_dump({**saved, "output_dir": str(res)}))
    resumed_config = tmp / "resumed.yaml"
    resumed_config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "output_dir": str(res)}))

    from isdaa.config import load_config

    with pytest.MonkeyPatch.context() as mp, pytest.raises(ValueError, match="written by a sharded"):
        mp.setenv("ACCELERATE_USE_CPU", "true")
        mp.syspath_prepend(str(tmp))
        train(load_config(str(resumed_config), kind="pref"), resume=True)

    launch_fsdp(resumed_config, tmp, "--resume")
    assert assert_same_weights(two, res, atol=0.0) == 0.0
    assert assert_same_weights(two / "best_by_drift", res / "best_by_drift", atol=0.0) == 0.0
    assert [_numeric(r) for r in read_jsonl(res / "metrics.jsonl")] == \
        [_numeric(r) for r in read_jsonl(two / "metrics.jsonl")]
    summary = json.loads((res / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from_step"] == 2


def test_fsdp1_on_cpu_is_refused_with_the_way_out(monkeypatch):
    """accelerate/torch refuse FSDP1 on CPU (sync_module_states, device_id); the launch check says which
    config runs instead, before anything is built. FSDP2 and non-CPU launches pass."""
    from isdaa.train.accel_compat import check_fsdp_launch

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="fsdp_version: 2 only"):
        check_fsdp_launch(cpu=True)
    check_fsdp_launch(cpu=False)
    monkeypatch.setenv("FSDP_VERSION", "2")
    check_fsdp_launch(cpu=True)
    assert yaml.safe_load(FSDP_CONFIG.read_text())["fsdp_config"]["fsdp_version"] == 2


def test_frozen_models_load_whole_under_an_fsdp_launch(tiny_dir, monkeypatch):
    """A frozen model (reference, live-eval models: never prepared) loads with cpu-RAM-efficient loading off
    (transformers 4.x would give processes other than local rank 0 uninitialized weights); the trained
    policy keeps the launch's setting (FSDP broadcasts rank 0's weights to it); the environment is restored."""
    from isdaa.config import load_config
    from isdaa.train import models

    seen = []
    real = models.safe_from_pretrained

    def spy(*args, **kwargs):
        seen.append(os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING"))
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "safe_from_pretrained", spy)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    mcfg = load_config({"model": {"name_or_path": str(tiny_dir)}, "data": {"train": "x.jsonl"}, "output_dir": "x"},
                       kind="pref").model
    tok = models.load_tokenizer(mcfg)
    frozen = models.load_causal_lm(mcfg, tok, trainable=False)
    models.load_causal_lm(mcfg, tok, trainable=True)
    assert seen == ["false", "true"] and os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert not any(p.requires_grad for p in frozen.parameters())
