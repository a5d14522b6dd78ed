"""A run's result does not depend on how its batch is split into micro-batches or processes (float64).

Every IS option (plain, self-normalized, length-normalized ratio, both, a tight clip) trains the same
float64 tiny Llama with one batch of 16 pairs per step as 1 x 16, 4 x 4 and 16 x 1 micro-batches
(and, in the two-process test, 2 processes x 8). Behavior log-probs differ from pi_ref by up to +-1.5
nats per response, so the weights differ from pair to pair from the first step. Tolerance: 1e-9
relative (float64 round-off, reduction order) on the loss, the pre-clip gradient norm, every weight
metric (is/*, drift/*) and the final weights; the step-1 gradient is also checked against a direct
float64 autograd computation of the definition (self-normalized weights over the whole batch).
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from isdaa.api import train
from isdaa.config import load_config
from isdaa.io import read_jsonl

REL = 1e-9
METRICS = ("loss", "grad_norm", "rewards/margins", "logps/chosen", "is/weight_mean", "is/weight_max",
           "is/clip_frac", "is/ess", "is/top_share", "drift/ess", "drift/clip_frac", "drift/log_ratio_mean",
           "drift/ratio_mean")
OPTIONS = {
    "plain": {},
    "self-norm": {"is_self_normalize": True},
    "len-norm": {"is_length_normalize": True},
    "self+len": {"is_self_normalize": True, "is_length_normalize": True},
    "tight-clip+self": {"is_clip": 0.1, "is_self_normalize": True},
}


def rows(n=32, seed=0):
    """Toy pairs whose behavior log-probs are declared to come from another sampler (so they are not
    checked against the initial policy): pi_b's log-probs are offsets of -1.5..+1.5 nats from a rough
    guess; the initial policy's own log-probs fill in when `offsets_from` is given."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = " ".join(f"w{rng.randrange(60)}" for _ in range(rng.randint(2, 6)))
        out.append({"prompt": prompt, "chosen": f"good yes w{rng.randrange(60)}",
                    "rejected": f"bad no w{rng.randrange(60)} w{rng.randrange(60)}" * rng.randint(1, 2),
                    "offset_c": rng.uniform(-1.5, 1.5), "offset_r": rng.uniform(-1.5, 1.5)})
    return out


def with_behavior(pairs, ref_c, ref_r):
    return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
             "chosen_logps": c + p["offset_c"], "rejected_logps": r + p["offset_r"],
             "behavior_model": "another-sampler"} for p, c, r in zip(pairs, ref_c, ref_r)]


@pytest.fixture(scope="module")
def data(tiny_dir, tmp_path_factory):
    """32 pairs with behavior columns = the initial policy's float64 log-probs + offsets."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isdaa.data import collate_pref, tokenize_pref
    from isdaa.logprobs import response_logps

    pairs = rows()
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float64).eval()
    ex = tokenize_pref([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs], tok, 32, 16)
    batch = collate_pref(ex, tok.pad_token_id)
    with torch.no_grad():
        lp = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    n = len(pairs)
    path = tmp_path_factory.mktemp("split") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in with_behavior(pairs, lp[:n].tolist(), lp[n:].tolist())))
    return path


def cfg_for(tiny_dir, data, out, micro, options, **over):
    base = {"model": {"name_or_path": str(tiny_dir), "dtype": "fp64"},
            "data": {"train": str(data), "max_length": 32, "max_prompt_length": 16},
            "optim": {"lr": 3e-3, "warmup_steps": 0, "scheduler": "constant"}, "output_dir": str(out),
            "method": "is-dpo", "beta": 0.1, "loss": options, "batch_size": 16, "micro_batch_size": micro,
            "epochs": 2, "logging_steps": 1, "progress": False, "num_threads": 1, "mixed_precision": "no",
            "ref_cache_dir": str(out) + "-cache", "seed": 0, **over}
    return load_config(base, kind="pref")


def records(out):
    return read_jsonl(f"{out}/metrics.jsonl")


def assert_same_run(a, b):
    ra, rb = records(a), records(b)
    assert len(ra) == len(rb) == 4
    for x, y in zip(ra, rb):
        for k in METRICS:
            assert x[k] == pytest.approx(y[k], rel=REL, abs=1e-12), (k, x["step"])
    wa, wb = load_file(f"{a}/model.safetensors"), load_file(f"{b}/model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=REL, atol=1e-12)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_micro_batch_split_changes_nothing(tiny_dir, data, tmp_path, name):
    outs = []
    for micro in (16, 4, 1):
        cfg = cfg_for(tiny_dir, data, tmp_path / f"m{micro}", micro, OPTIONS[name])
        assert train(cfg)["status"] == "finished"
        outs.append(cfg.output_dir)
    first = records(outs[0])[0]
    assert first["is/ess"] < 0.95  # the weights really differ between pairs
    if OPTIONS[name].get("is_self_normalize"):
        assert all(r["is/weight_mean"] == pytest.approx(1.0, rel=1e-12) for r in records(outs[0]))
    for other in outs[1:]:
        assert_same_run(outs[0], other)


def test_step_one_gradient_is_the_definition(tiny_dir, data, tmp_path):
    """The logged step-1 gradient norm of self-normalized IS-DPO over 16 x 1 micro-batches equals the norm
    of the float64 autograd gradient of mean_i (w_i / mean_j w_j) L_i over the step's 16 pairs, computed
    directly (isdaa.losses with is_self_normalize over the whole batch, no trainer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isdaa.data import collate_pref, tokenize_pref
    from isdaa.logprobs import response_logps
    from isdaa.losses import preference_loss
    from isdaa.train.loop import epoch_permutation

    cfg = cfg_for(tiny_dir, data, tmp_path / "run", 1, OPTIONS["self+len"], max_steps=1)
    train(cfg)
    logged = records(cfg.output_dir)[0]

    all_rows = read_jsonl(data)
    idx = epoch_permutation(0, 0, len(all_rows))[:16].tolist()
    step_rows = [all_rows[i] for i in idx]
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float64)
    ex = tokenize_pref(step_rows, tok, 32, 16)
    batch = collate_pref(ex, tok.pad_token_id)
    lp = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    ref = lp.detach()
    out = preference_loss("is-dpo", 0.1, lp[:16], lp[16:], ref[:16], ref[16:],
                          behavior_chosen_logps=batch["chosen_logps"].double(),
                          behavior_rejected_logps=batch["rejected_logps"].double(),
                          chosen_lengths=batch["chosen_lengths"], rejected_lengths=batch["rejected_lengths"],
                          is_self_normalize=True, is_length_normalize=True)
    out.loss.backward()
    norm = math.sqrt(sum(float((p.grad**2).sum()) for p in model.parameters() if p.grad is not None))
    # the trainer's reference log-probs are stored in float32: 1e-7 relative on u, hence 1e-6 here
    assert logged["grad_norm"] == pytest.approx(norm, rel=1e-6)
    assert logged["loss"] == pytest.approx(float(out.loss), rel=1e-6)
    assert logged["is/ess"] == pytest.approx(float(out.metrics["is/ess"]), rel=1e-9)
    assert logged["is/weight_max"] == pytest.approx(float(out.metrics["is/weight_max"]), rel=1e-9)


def test_two_processes_equal_one(tiny_dir, data, tmp_path, torchrun):
    """`torchrun --nproc_per_node 2` (gloo, CPU), 8 pairs per process in micro-batches of 4, self-normalized
    and length-normalized IS-DPO: every metric and the final weights equal the one-process 16 x 1 run's."""
    from isdaa.config import to_dict

    one = cfg_for(tiny_dir, data, tmp_path / "one", 1, OPTIONS["self+len"])
    train(one)
    two = cfg_for(tiny_dir, data, tmp_path / "two", 4, OPTIONS["self+len"])
    path = tmp_path / "two.yaml"
    path.write_text(json.dumps({"kind": "pref", **to_dict(two)}))
    torchrun(["-m", "isdaa.cli", "train", "pref", "--config", path])
    assert_same_run(one.output_dir, two.output_dir)
