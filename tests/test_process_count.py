"""Two processes (torchrun, gloo, CPU) give what one gives where the processes' shares are unequal.

- SFT: the loss is the mean NLL per response token of the GLOBAL batch. Completions of 1 or 10 words put
  unequal token counts on the two processes; each dividing by its own count (then DDP averaging) gave a
  different gradient (measured at step 1: grad_norm 1.3157 vs 1.2266). Now each process divides by
  global tokens / processes.
- Evaluation on an eval set whose size is not a multiple of the process count: every example is evaluated
  once (the shorter shard runs a dummy chunk that adds nothing), where the last len % world were dropped.
Tolerance: rel 1e-5 (float32, reduction order).
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from safetensors.torch import load_file

from isdaa.api import train
from isdaa.config import load_config, to_dict
from isdaa.io import read_jsonl

VOLATILE = {"tokens_per_s", "elapsed_s"}


def sft_rows(n=32, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = 1 if (i // 4) % 2 else 10  # blocks of 4 short / 4 long completions: unequal shards
        out.append({"prompt": " ".join(f"w{rng.randrange(60)}" for _ in range(3)),
                    "completion": " ".join(f"w{rng.randrange(60)}" for _ in range(words))})
    return out


def pref_rows(n, seed):
    rng = random.Random(seed)
    return [{"prompt": " ".join(f"w{rng.randrange(60)}" for _ in range(rng.randint(2, 5))),
             "chosen": f"good yes w{rng.randrange(60)}", "rejected": f"bad no w{rng.randrange(60)} w{rng.randrange(9)}"}
            for _ in range(n)]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def two_processes(torchrun, cfg, tmp_path, kind):
    out = tmp_path / "two"
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({"kind": kind, **to_dict(cfg), "output_dir": str(out)}))
    torchrun(["-m", "isdaa.cli", "train", kind, "--config", path])
    return out


def assert_same(one, two, keys=None):
    ra, rb = read_jsonl(f"{one}/metrics.jsonl"), read_jsonl(f"{two}/metrics.jsonl")
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb):
        assert set(x) == set(y)
        for k in keys or sorted(set(x) - VOLATILE):
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-6), (k, x["step"])


def test_sft_two_processes_equal_one_with_unequal_token_counts(tiny_dir, tmp_path, torchrun, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    cfg = load_config({"model": {"name_or_path": str(tiny_dir)},
                       "data": {"train": write(tmp_path / "sft.jsonl", sft_rows()), "max_length": 32,
                                "max_prompt_length": 16}, "optim": {"lr": 3e-3, "warmup_steps": 0},
                       "output_dir": str(tmp_path / "one"), "batch_size": 8, "micro_batch_size": 2, "max_steps": 3,
                       "logging_steps": 1, "progress": False, "num_threads": 1, "mixed_precision": "no"}, kind="sft")
    train(cfg)
    two = two_processes(torchrun, cfg, tmp_path, "sft")
    assert_same(cfg.output_dir, two)
    wa, wb = load_file(f"{cfg.output_dir}/model.safetensors"), load_file(f"{two}/model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_eval_set_not_a_multiple_of_the_processes_is_evaluated_whole(tiny_dir, tmp_path, torchrun, monkeypatch):
    """7 eval pairs in chunks of 2 over 2 processes: shards of 4 and 3 pairs, 2 chunks each (the second
    process's last chunk holds 1 pair). Every eval/* metric equals the one-process value over all 7."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    cfg = load_config({"model": {"name_or_path": str(tiny_dir)},
                       "data": {"train": write(tmp_path / "train.jsonl", pref_rows(16, 0)),
                                "eval": write(tmp_path / "eval.jsonl", pref_rows(7, 1)),
                                "max_length": 32, "max_prompt_length": 16},
                       "optim": {"lr": 3e-3, "warmup_steps": 0}, "output_dir": str(tmp_path / "one"),
                       "method": "is-dpo", "loss": {"is_self_normalize": True}, "batch_size": 4,
                       "micro_batch_size": 2, "max_steps": 2, "eval_steps": 1, "eval_batch_size": 2,
                       "logging_steps": 1, "progress": False, "num_threads": 1, "mixed_precision": "no",
                       "ref_cache_dir": str(tmp_path / "cache")}, kind="pref")
    train(cfg)
    two = two_processes(torchrun, cfg, tmp_path, "pref")
    rows = read_jsonl(f"{cfg.output_dir}/metrics.jsonl")
    eval_keys = sorted(k for k in rows[0] if k.startswith("eval/"))
    assert "eval/loss" in eval_keys and "eval/is/ess" in eval_keys and "eval/drift/ess" in eval_keys
    assert_same(cfg.output_dir, two, eval_keys)
