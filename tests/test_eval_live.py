"""LiveEvalCallback: logs KL and win rate on schedule; the KL budget requests a stop."""

from __future__ import annotations

import copy

import pytest
import torch


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval(), AutoTokenizer.from_pretrained(tiny_dir)


def ctx_for(model, tok, step, total=100):
    from isdaa.train.callbacks import TrainContext

    return TrainContext(step=step, examples_seen=8 * step, total_steps=total, epoch=0.0, model=model,
                        tokenizer=tok, cfg=None, output_dir="")


def test_live_logs_on_schedule_and_budget_stops(tiny):
    from isdaa.evaluate.live import LiveEvalCallback

    model, tok = tiny
    policy = copy.deepcopy(model).train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    prompts = [f"w{i} good" for i in range(8)]
    cb = LiveEvalCallback(model, prompts, every=5, n_prompts=6, max_new_tokens=5, kl_samples_per_prompt=4,
                          reward=lambda p, r: [float(len(x.split())) for x in r], chosen=["a b"] * 8,
                          kl_budget=1e-3)
    c = ctx_for(policy, tok, step=3)
    cb.on_step_end(c)
    assert c.logged == {} and c.stop_reason is None
    c = ctx_for(policy, tok, step=5)
    cb.on_step_end(c)
    assert {"eval/kl_k1", "eval/kl_k3", "eval/sqrt_kl", "eval/win_rate", "eval/win_rate_se"} <= set(c.logged)
    assert c.logged["eval/kl_k3"] > 0 and 0 <= c.logged["eval/win_rate"] <= 1
    assert c.stop_reason is not None and "kl_budget" in c.stop_reason
    assert policy.training  # training mode restored

    same = LiveEvalCallback(model, prompts, every=5, n_prompts=4, max_new_tokens=4, kl_budget=1e-3)
    c = ctx_for(model, tok, step=10)
    same.on_step_end(c)
    assert abs(c.logged["eval/kl_k1"]) < 1e-4 and c.stop_reason is None and "eval/win_rate" not in c.logged


def test_live_callback_in_a_real_training_run(tiny_dir, tmp_path):
    """End to end with the trainer: eval/* keys land in metrics.jsonl and the KL budget stops the run."""
    import json

    from transformers import AutoModelForCausalLM

    from isdaa.api import train
    from isdaa.config import load_config
    from isdaa.evaluate.live import LiveEvalCallback
    from isdaa.io import read_jsonl

    rows = [{"prompt": f"w{i} w{i + 3}", "chosen": f"good yes w{i}", "rejected": f"bad no w{i}"} for i in range(48)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config({"model": {"name_or_path": str(tiny_dir)},
                       "data": {"train": str(tmp_path / "d.jsonl"), "max_length": 24, "max_prompt_length": 8},
                       "optim": {"lr": 3e-2, "warmup_steps": 0}, "output_dir": str(tmp_path / "run"),
                       "batch_size": 8, "micro_batch_size": 8, "epochs": 1, "logging_steps": 1,
                       "progress": False, "num_threads": 1, "mixed_precision": "no", "seed": 0,
                       "method": "dpo", "beta": 0.1, "ref_cache_dir": str(tmp_path / "cache")}, [], kind="pref")
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    cb = LiveEvalCallback(ref, [r["prompt"] for r in rows], every=2, n_prompts=8, max_new_tokens=6,
                          kl_samples_per_prompt=2, kl_budget=0.05)
    summary = train(cfg, callbacks=[cb])
    logged = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval/kl_k1" in r]
    assert logged and all(r["step"] % 2 == 0 for r in logged)
    assert summary["status"] == "stopped" and "kl_budget" in json.dumps(summary)


def test_live_kl_of_an_unchanged_policy_is_zero_under_bf16_mixed_precision(tiny_dir, tmp_path):
    """mixed_precision bf16 (CPU autocast) at a learning rate that leaves the weights unchanged: the policy
    equals its reference, so every sampled sequence's log-ratio is 0 and so is the live KL. The policy used
    to be scored inside the training autocast (bf16) against a reference scored in fp32: k1 read -2.7e-4.
    Now both are scored in the weights' precision, outside the training autocast: |k1| < 1e-6 (fp32 noise)."""
    import json

    from transformers import AutoModelForCausalLM

    from isdaa.api import train
    from isdaa.config import load_config
    from isdaa.evaluate.live import LiveEvalCallback
    from isdaa.io import read_jsonl

    rows = [{"prompt": f"w{i} w{i + 3}", "chosen": f"good yes w{i}", "rejected": f"bad no w{i}"} for i in range(16)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config({"model": {"name_or_path": str(tiny_dir)},
                       "data": {"train": str(tmp_path / "d.jsonl"), "max_length": 24, "max_prompt_length": 8},
                       "optim": {"optimizer": "sgd", "lr": 1e-30, "warmup_steps": 0},
                       "output_dir": str(tmp_path / "run"),
                       "batch_size": 8, "micro_batch_size": 8, "max_steps": 1, "logging_steps": 1,
                       "progress": False, "num_threads": 1, "mixed_precision": "bf16", "seed": 0,
                       "method": "dpo", "beta": 0.1, "ref_cache_dir": str(tmp_path / "cache")}, [], kind="pref")
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    cb = LiveEvalCallback(ref, [r["prompt"] for r in rows], every=1, n_prompts=16, max_new_tokens=8,
                          kl_samples_per_prompt=4)
    train(cfg, callbacks=[cb])
    (logged,) = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "eval/kl_k1" in r]
    assert abs(logged["eval/kl_k1"]) < 1e-6 and abs(logged["eval/kl_k3"]) < 1e-6
