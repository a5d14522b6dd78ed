"""The training engine on a tiny Llama (CPU, no downloads): learning, invariances, resume, reference
log-probs, callbacks, the batch_source hook."""

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from isdaa.api import train
from isdaa.config import load_config
from isdaa.io import read_jsonl
from isdaa.losses import METHODS
from isdaa.train.callbacks import StopAtStep, TrainerCallback

VOLATILE = {"tokens_per_s", "elapsed_s"}


def pref_rows(n=64, seed=0, conversational=False):
    """Learnable toy preferences: chosen responses say 'good yes', rejected ones 'bad no'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(f"w{rng.randrange(60)}" for _ in range(rng.randint(2, 6)))
        chosen, rejected = f"good yes w{rng.randrange(60)}", f"bad no w{rng.randrange(60)}"
        if conversational:
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def make_cfg(tiny_dir, tmp_path, name="run", rows=None, kind="pref", **over):
    data = write_jsonl(tmp_path / f"{name}.jsonl", rows or pref_rows())
    base = {"model": {"name_or_path": str(tiny_dir)},
            "data": {"train": data, "max_length": 32, "max_prompt_length": 16},
            "optim": {"lr": 3e-3, "warmup_steps": 0}, "output_dir": str(tmp_path / name),
            "batch_size": 8, "micro_batch_size": 4, "epochs": 1, "logging_steps": 1, "progress": False,
            "num_threads": 1, "mixed_precision": "no", "seed": 0}
    if kind == "pref":
        base.update({"method": "dpo", "beta": 0.1, "ref_cache_dir": str(tmp_path / "cache")})
    overrides = [f"{k}={json.dumps(v)}" for k, v in over.items()]
    return load_config(base, overrides, kind=kind)


def metrics(cfg):
    return [{k: v for k, v in r.items() if k not in VOLATILE}
            for r in read_jsonl(f"{cfg.output_dir}/metrics.jsonl")]


def weights(path):
    return load_file(f"{path}/model.safetensors")


@pytest.mark.parametrize("method", ["dpo", "is-dpo"])
def test_loss_falls_and_accuracy_rises(tiny_dir, tmp_path, method):
    eval_path = write_jsonl(tmp_path / "eval.jsonl", pref_rows(16, seed=5))
    cfg = make_cfg(tiny_dir, tmp_path, method=method, batch_size=16, micro_batch_size=8, epochs=4,
                   data={"eval": eval_path}, eval_steps=8)
    summary = train(cfg)
    rows = metrics(cfg)
    assert summary["status"] == "finished" and len(rows) == summary["total_steps"] == 16
    first, last = rows[0], rows[-1]
    assert last["loss"] < first["loss"] - 0.1
    assert last["rewards/accuracies"] > max(first["rewards/accuracies"], 0.9)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [8, 16] and evals[-1]["eval/rewards/accuracies"] > 0.9


def test_accumulation_equals_big_batch(tiny_dir, tmp_path):
    """batch 8 x accumulation 1 == batch 1 x accumulation 8: per-pair losses averaged over the global batch."""
    a = make_cfg(tiny_dir, tmp_path, "a", micro_batch_size=8, method="is-dpo")
    b = make_cfg(tiny_dir, tmp_path, "b", micro_batch_size=1, method="is-dpo")
    train(a), train(b)
    ra, rb = metrics(a), metrics(b)
    for x, y in zip(ra, rb):
        for k in ("loss", "grad_norm", "rewards/margins", "is/weight_mean", "is/weight_max", "is/ess", "is/top_share"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), k
    wa, wb = weights(a.output_dir), weights(b.output_dir)  # the final model at the output root
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8, "dropout": 0.0}])
def test_resume_reproduces_an_uninterrupted_run(tiny_dir, tmp_path, lora):
    model = {"name_or_path": str(tiny_dir), "lora": lora}
    full = make_cfg(tiny_dir, tmp_path, "full", epochs=2, method="is-ipo", model=model)
    part = make_cfg(tiny_dir, tmp_path, "part", epochs=2, method="is-ipo", model=model)
    train(full)
    stopped = train(part, callbacks=[StopAtStep(5, "test stop")])
    assert (stopped["status"], stopped["stop_reason"], stopped["step"]) == ("stopped", "test stop", 5)
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["status"] == "stopped"
    resumed = train(part, resume=True)
    assert resumed["status"] == "finished" and resumed["resumed_from_step"] == 5
    assert metrics(full) == metrics(part)
    name = "adapter_model" if lora else "model"  # LoRA checkpoints hold the adapter (peft layout)
    wf, wp = (load_file(f"{c.output_dir}/{name}.safetensors") for c in (full, part))
    assert wf.keys() == wp.keys() and all(torch.equal(wf[k], wp[k]) for k in wf)


def test_precomputed_and_on_the_fly_reference_agree(tiny_dir, tmp_path):
    pre = make_cfg(tiny_dir, tmp_path, "pre", max_steps=3, method="is-dpo")
    fly = make_cfg(tiny_dir, tmp_path, "fly", max_steps=3, method="is-dpo", ref_logps="on_the_fly")
    train(pre), train(fly)
    for x, y in zip(metrics(pre), metrics(fly)):
        for k in ("loss", "rewards/chosen", "rewards/rejected", "is/weight_mean"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), k
    # the cache is keyed on model + tokenized data: a second run reuses it
    again = make_cfg(tiny_dir, tmp_path, "pre2", max_steps=1)
    assert train(again)["ref_cache_hits"] == 1


def test_behavior_columns_enter_the_importance_weight(tiny_dir, tmp_path):
    """With behavior log-probs 1 nat below the reference on each response, the first step's log-weight
    is 2 = 2*eps (policy = ref): w = e^2; without them pi_b = pi_ref and w = 1."""
    plain = make_cfg(tiny_dir, tmp_path, "plain", max_steps=1, method="is-dpo")
    train(plain)
    ref = pref_rows()
    cache = next((tmp_path / "cache").glob("*.pt"))  # the reference log-probs the plain run computed
    logps = torch.load(cache, weights_only=True)
    rows = [{**r, "ref_chosen_logps": c, "ref_rejected_logps": j, "chosen_logps": c - 1.0, "rejected_logps": j - 1.0,
             "behavior_model": "another-sampler"}  # declared: not expected to be the initial policy's
            for r, c, j in zip(ref, logps["ref_chosen_logps"].tolist(), logps["ref_rejected_logps"].tolist())]
    beh = make_cfg(tiny_dir, tmp_path, "beh", rows=rows, max_steps=1, method="is-dpo")
    summary = train(beh)
    assert summary["ref_cache_hits"] == 0
    assert metrics(plain)[0]["is/weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert metrics(beh)[0]["is/weight_mean"] == pytest.approx(math.exp(2.0), rel=1e-4)
    assert metrics(beh)[0]["loss"] == pytest.approx(math.exp(2.0) * metrics(plain)[0]["loss"], rel=1e-4)


def test_checkpoint_schedule_callbacks_and_refusal(tiny_dir, tmp_path):
    seen = []

    class Recorder(TrainerCallback):
        def on_step_end(self, ctx):
            seen.append((ctx.step, ctx.examples_seen, ctx.total_steps, round(ctx.metrics["loss"], 6)))
            if ctx.step == 2:
                ctx.log({"custom/value": 42.0})

        def on_train_end(self, ctx):
            seen.append(("end", ctx.summary["status"]))

    cfg = make_cfg(tiny_dir, tmp_path, "sched", epochs=2, logging_steps=4, save_initial=True,
                   save_fractions=[0.25, 0.5], save_examples=[24])
    train(cfg, callbacks=[Recorder()])
    out = tmp_path / "sched"
    steps = sorted((p.name for p in out.glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))
    assert steps == ["checkpoint-0", "checkpoint-3", "checkpoint-4", "checkpoint-8"]
    # each scheduled checkpoint resumable, as TRL's (the initial policy holds no resume state)
    assert sorted(p.parent.name for p in out.glob("*/optimizer.pt")) == ["checkpoint-3", "checkpoint-4", "checkpoint-8"]
    state = json.loads((out / "checkpoint-4" / "isdaa_state.json").read_text())
    assert (state["step"], state["examples_seen"], state["total_steps"]) == (4, 32, 16)
    hf = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert (hf["global_step"], hf["max_steps"], [e["step"] for e in hf["log_history"]]) == (4, 16, [2, 4])
    assert (out / "model.safetensors").exists() and (out / "config.yaml").exists()
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 4, 8, 12, 16]  # logging steps + the step a callback logged
    assert rows[0]["custom/value"] == 42.0
    assert seen[0][:3] == (1, 8, 16) and seen[-1] == ("end", "finished")
    with pytest.raises(FileExistsError, match="finished run"):
        train(cfg)
    assert train(cfg, resume=True)["status"] == "finished"  # nothing left to do
    assert train(make_cfg(tiny_dir, tmp_path, "sched", max_steps=1), overwrite=True)["step"] == 1


def test_batch_source_hook_online(tiny_dir, tmp_path):
    """The lab's online DPO: rows sampled each step; without ref columns the reference scores them."""
    calls = []

    def source(step, model, tokenizer):
        calls.append((step, type(model).__name__))
        return pref_rows(8, seed=step)

    cfg = make_cfg(tiny_dir, tmp_path, "online", max_steps=3)
    summary = train(cfg, batch_source=source)
    assert summary["status"] == "finished" and [c[0] for c in calls] == [0, 1, 2]
    assert calls[0][1] == "LlamaForCausalLM" and summary["examples_seen"] == 24
    assert metrics(cfg)[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)  # policy == ref at step 1


def test_reward_model_learns_separable_data(tiny_dir, tmp_path):
    eval_path = write_jsonl(tmp_path / "rm_eval.jsonl", pref_rows(32, seed=1))
    cfg = make_cfg(tiny_dir, tmp_path, "rm", kind="rm", batch_size=16, micro_batch_size=16, epochs=3,
                   data={"train": str(tmp_path / "rm.jsonl"), "eval": eval_path, "max_length": 32,
                         "max_prompt_length": 16})
    summary = train(cfg)
    final = summary["final_metrics"]
    assert final["eval/accuracy"] > 0.8 and final["loss"] < metrics(cfg)[0]["loss"]


def test_sft_on_completions(tiny_dir, tmp_path):
    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pref_rows()]
    cfg = make_cfg(tiny_dir, tmp_path, "sft", rows=rows, kind="sft", epochs=2, optim={"lr": 1e-2, "warmup_steps": 0})
    train(cfg)
    rows = metrics(cfg)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert rows[-1]["nll_per_token"] == pytest.approx(rows[-1]["loss"], rel=1e-4)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process(tiny_dir, tmp_path, monkeypatch, torchrun):
    """`torchrun --nproc_per_node 2` (gloo, CPU): the same global batch gives the same curve and metrics
    (gradients averaged over processes; IS metrics reduced over the global batch). Both sides on the CPU, also
    on a machine with a GPU (where accelerate would otherwise put the one-process run there)."""
    import yaml

    from isdaa.config import to_dict

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    single = make_cfg(tiny_dir, tmp_path, "one", max_steps=3, method="is-dpo")
    train(single)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({**to_dict(single), "output_dir": str(tmp_path / "two")}))
    torchrun(["-m", "isdaa.cli", "train", "pref", "--config", path], timeout=120)
    two = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert len(two) == 3
    for x, y in zip(metrics(single), two):
        for k in ("loss", "grad_norm", "is/ess", "is/top_share", "is/weight_max", "rewards/margins"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), k
    assert (tmp_path / "two" / "model.safetensors").exists()


def test_tokenizer_without_pad_reuses_eos(tiny_dir, tmp_path):
    """No pad token: EOS becomes pad, the embeddings keep their size, training works."""
    import shutil

    from transformers import AutoTokenizer

    model_dir = tmp_path / "nopad"
    shutil.copytree(tiny_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    tok_cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    tok_cfg.pop("pad_token", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    assert AutoTokenizer.from_pretrained(model_dir).pad_token is None
    cfg = make_cfg(model_dir, tmp_path, "nopad-run", max_steps=2)
    assert train(cfg)["status"] == "finished"
    saved = json.loads((tmp_path / "nopad-run" / "config.json").read_text())
    assert saved["vocab_size"] == config["vocab_size"]
    assert AutoTokenizer.from_pretrained(tmp_path / "nopad-run").pad_token == "<eos>"


def test_missing_tracker_is_a_clear_error(tiny_dir, tmp_path):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install tensorboard"):
        train(make_cfg(tiny_dir, tmp_path, "tb", max_steps=1, report_to=["tensorboard"]))


REFERENCE_FREE = [name for name, m in METHODS.items() if not (m.needs_reference or m.importance_weighted)]


@pytest.mark.parametrize("method", REFERENCE_FREE)
@pytest.mark.parametrize("ref_logps", ["precompute", "on_the_fly"])
def test_reference_free_methods_run_no_reference_pass(tiny_dir, tmp_path, monkeypatch, method, ref_logps):
    """No reference forward at all (no cache entry, `_ref_logps` never called); rewards/* use ref = 0, so
    rewards/chosen = beta * logps/chosen. An IS variant without behavior columns falls back to pi_b = pi_ref
    and does compute the reference (one cache entry); with behavior columns it does not."""
    from isdaa.train.pref import PrefTask

    def no_reference(self, batch):
        raise AssertionError("reference forward for a reference-free method")

    monkeypatch.setattr(PrefTask, "_ref_logps", no_reference)
    behavior = [{**r, "chosen_logps": -5.0, "rejected_logps": -6.0, "behavior_model": "another-sampler"}
                for r in pref_rows(16)]
    cache = tmp_path / "cache"
    cfg = make_cfg(tiny_dir, tmp_path, "plain", rows=pref_rows(16), method=method, max_steps=2, ref_logps=ref_logps)
    assert train(cfg)["status"] == "finished"
    cfg = make_cfg(tiny_dir, tmp_path, "weighted", rows=behavior, method=f"is-{method}", max_steps=2,
                   ref_logps=ref_logps)
    assert train(cfg)["status"] == "finished"
    assert not cache.exists() or not any(cache.iterdir())
    for row in metrics(cfg):
        assert row["rewards/chosen"] == pytest.approx(cfg.beta * row["logps/chosen"], rel=1e-5)
    if ref_logps == "precompute":
        cfg = make_cfg(tiny_dir, tmp_path, "fallback", rows=pref_rows(16), method=f"is-{method}", max_steps=2)
        assert train(cfg)["status"] == "finished" and len(list(cache.iterdir())) == 1
