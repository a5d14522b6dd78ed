"""Wrong behavior log-probs (pi_b's `chosen_logps` / `rejected_logps`) are a clear error naming rows, never a
silent run: IS-DPO on per-token-mean behavior columns used to "finish" with weights ~2e-7 and no gradient.

Three nets, each tested on its own: the start-of-training sample (rows that declare no sampler are now
checked too), the reference pass (the initial policy's log-probs of EVERY row, computed anyway when the
reference is the initial policy), and step 1 (pi_theta = the initial policy: each pair's weight must be 1),
which raises before the first update. Rows declaring another sampler (`behavior_model`) are used as given,
with one warning when their step-1 weights are already degenerate.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from isdaa.api import train
from isdaa.config import load_config
from isdaa.train import reference as reference_mod


def pairs(n=32, seed=0):
    rng = random.Random(seed)
    return [{"prompt": " ".join(f"w{rng.randrange(60)}" for _ in range(rng.randint(2, 6))),
             "chosen": f"good yes w{rng.randrange(60)}", "rejected": f"bad no w{rng.randrange(60)}"} for _ in range(n)]


@pytest.fixture(scope="module")
def initial_logps(tiny_dir):
    """The initial policy's summed response log-probs (float32) and response lengths of `pairs()`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isdaa.data import collate_pref, tokenize_pref
    from isdaa.logprobs import response_logps

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    batch = collate_pref(tokenize_pref(pairs(), tok, 32, 16), tok.pad_token_id)
    with torch.no_grad():
        lp = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    n = len(pairs())
    return lp[:n].tolist(), lp[n:].tolist(), batch["chosen_lengths"].tolist(), batch["rejected_lengths"].tolist()


def run_cfg(tiny_dir, tmp_path, rows, **over):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"model": {"name_or_path": str(tiny_dir)}, "data": {"train": str(data), "max_length": 32,
            "max_prompt_length": 16}, "optim": {"lr": 1e-3, "warmup_steps": 0}, "output_dir": str(tmp_path / "run"),
            "method": "is-dpo", "batch_size": 32, "micro_batch_size": 8, "max_steps": 2, "logging_steps": 1,
            "progress": False, "num_threads": 1, "mixed_precision": "no", "ref_cache_dir": str(tmp_path / "cache"),
            **over}
    return load_config(base, kind="pref")


def behavior_rows(logps, wrong=(), per_token=False, **extra):
    """pairs() with behavior columns = the initial policy's log-probs; rows in `wrong` get the per-token mean
    instead (every row when `per_token`)."""
    c, r, lc, lr = logps
    out = []
    for i, p in enumerate(pairs()):
        bad = per_token or i in wrong
        out.append({**p, "chosen_logps": c[i] / lc[i] if bad else c[i],
                    "rejected_logps": r[i] / lr[i] if bad else r[i], **extra})
    return out


def test_per_token_means_everywhere_fail_before_training(tiny_dir, tmp_path, initial_logps):
    cfg = run_cfg(tiny_dir, tmp_path, behavior_rows(initial_logps, per_token=True))
    with pytest.raises(ValueError, match="stored chosen_logps / rejected_logps do not match the initial policy") as err:
        train(cfg)
    msg = str(err.value)
    assert "pairs.jsonl: line " in msg and "behavior_model" in msg and "per-token means" in msg
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained


def test_the_reference_pass_checks_every_row(tiny_dir, tmp_path, initial_logps, monkeypatch):
    """The start-of-training sample misses the one wrong row (line 20); the reference pass, which computes
    the initial policy's log-probs of every row anyway, names it."""
    monkeypatch.setattr(reference_mod, "_check_sample", lambda ex, n, seed: [0, 1])
    cfg = run_cfg(tiny_dir, tmp_path, behavior_rows(initial_logps, wrong={19}))
    with pytest.raises(ValueError, match="pairs.jsonl: line 20: chosen_logps stored") as err:
        train(cfg)
    assert "line 1:" not in str(err.value) and "1 value(s)" not in str(err.value)  # both columns of line 20 only
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_step_one_catches_rows_no_pass_looked_at(tiny_dir, tmp_path, initial_logps, monkeypatch):
    """Reference columns given (no reference pass) and the sample misses the wrong row: step 1, where
    pi_theta = pi_0 and every weight must be 1, raises before the first optimizer update."""
    monkeypatch.setattr(reference_mod, "_check_sample", lambda ex, n, seed: [0, 1])
    c, r, _, _ = initial_logps
    rows = [{**row, "ref_chosen_logps": c[i], "ref_rejected_logps": r[i]}
            for i, row in enumerate(behavior_rows(initial_logps, wrong={6}))]
    cfg = run_cfg(tiny_dir, tmp_path, rows)
    with pytest.raises(ValueError, match=r"step 1 \(pi_theta = the initial policy\), IS weights far from 1") as err:
        train(cfg)
    assert "pairs.jsonl: line 7: chosen_logps stored" in str(err.value)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_correct_columns_train_with_weight_one(tiny_dir, tmp_path, initial_logps):
    cfg = run_cfg(tiny_dir, tmp_path, behavior_rows(initial_logps))
    assert train(cfg)["status"] == "finished"
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["is/weight_mean"] == pytest.approx(1.0, abs=1e-4) and first["is/ess"] == pytest.approx(1.0, abs=1e-6)


def test_declared_other_sampler_is_used_as_given_with_a_warning(tiny_dir, tmp_path):
    rows = [{**p, "chosen_logps": -2.0, "rejected_logps": -2.0, "behavior_model": "some-other-model"} for p in pairs()]
    cfg = run_cfg(tiny_dir, tmp_path, rows)
    with pytest.warns(UserWarning, match="already degenerate"):
        assert train(cfg)["status"] == "finished"


def test_check_logps_off_trusts_the_columns(tiny_dir, tmp_path, initial_logps):
    cfg = run_cfg(tiny_dir, tmp_path, behavior_rows(initial_logps, per_token=True), check_logps="off")
    assert train(cfg)["status"] == "finished"
