"""label_pairs: Bradley-Terry frequencies, argmax labels, the four log-prob columns, resumable shards."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from isdaa.io import read_jsonl


def hashed_reward(prompts, responses):
    """A deterministic golden reward in {0, 0.5, ..., 2} from the response text."""
    return [int(hashlib.md5(r.encode()).hexdigest(), 16) % 5 * 0.5 for r in responses]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval(), AutoTokenizer.from_pretrained(tiny_dir)


def test_bt_first_wins_frequencies():
    """p(first wins) = sigmoid(r1 - r2), for differences -2, 0, 0.5, 3 (20k draws each, within 4 se)."""
    from isdaa.evaluate.label import bt_first_wins

    rng = np.random.default_rng(0)
    for d in (-2.0, 0.0, 0.5, 3.0):
        wins = bt_first_wins(np.full(20000, d), np.zeros(20000), rng)
        p = 1 / (1 + math.exp(-d))
        assert abs(wins.mean() - p) < 4 * math.sqrt(p * (1 - p) / 20000)


def test_label_pairs_bt_matches_sigmoid(tiny):
    """Given the unordered pair, P(the higher-reward response is chosen) = sigmoid(|r1 - r2|), so over
    pairs with distinct rewards, mean 1[r_chosen > r_rejected] must match mean sigmoid(|delta|)."""
    from isdaa.evaluate.label import label_pairs

    model, tok = tiny
    prompts = [f"w{i % 50} w{(7 * i) % 50}" for i in range(600)]
    rows = label_pairs(model, tok, prompts, hashed_reward, n=2, max_new_tokens=5, seed=1)
    assert len(rows) == 600
    for row in rows[:20]:  # the sampler is the reference at T = 1: the same numbers
        assert row["chosen_logps"] == row["ref_chosen_logps"] and row["rejected_logps"] == row["ref_rejected_logps"]
        assert row["chosen_logps"] < 0 and {"prompt", "chosen", "rejected"} <= set(row)
    d = np.array([r["chosen_reward"] - r["rejected_reward"] for r in rows])
    d = d[d != 0]
    assert len(d) > 300
    p = 1 / (1 + np.exp(-np.abs(d)))
    se = math.sqrt(np.sum(p * (1 - p))) / len(d)
    assert abs((d > 0).mean() - p.mean()) < 4 * se


def test_label_pairs_argmax_and_ref_logps(tiny, tiny_dir):
    from transformers import AutoModelForCausalLM

    from isdaa.evaluate.label import label_pairs

    model, tok = tiny
    ref = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    with __import__("torch").no_grad():
        ref.lm_head.weight.mul_(0.5)  # a different reference
    rows = label_pairs(model, tok, ["w1 w2", "w3 good"] * 20, hashed_reward, n=4, labeling="argmax",
                       max_new_tokens=4, ref=ref, temperature=0.8)
    assert len(rows) == 80  # n / 2 pairs per prompt
    assert all(r["chosen_reward"] >= r["rejected_reward"] for r in rows)
    assert all(r["chosen_logps"] != r["ref_chosen_logps"] for r in rows)


def test_label_pairs_resumes_shards(tiny, tmp_path):
    from isdaa.evaluate.label import label_pairs

    model, tok = tiny
    prompts = [f"w{i}" for i in range(30)]
    kw = {"n": 2, "max_new_tokens": 4, "seed": 3, "shard_size": 10, "out_dir": tmp_path}
    first = label_pairs(model, tok, prompts, hashed_reward, **kw)
    assert sorted(p.name for p in tmp_path.glob("shard-*.jsonl")) == [f"shard-0000{k}.jsonl" for k in range(3)]
    (tmp_path / "shard-00001.jsonl").unlink()  # as if killed during shard 1
    calls = []
    second = label_pairs(model, tok, prompts, lambda p, r: calls.append(len(r)) or hashed_reward(p, r), **kw)
    assert calls == [20]  # only the missing shard was sampled and scored
    assert second == first  # and it is identical (per-shard seeds)
    assert read_jsonl(tmp_path / "pairs.jsonl") == first
    with pytest.raises(ValueError, match="other settings"):
        label_pairs(model, tok, prompts, hashed_reward, **{**kw, "seed": 4})


def test_cli_label(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from isdaa.cli import main
    from isdaa.io import atomic_write_jsonl

    atomic_write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"w{i} good"} for i in range(6)])
    args = ["label", "--policy", str(tiny_dir), "--reward", "test_label:hashed_reward", "--data",
            str(tmp_path / "prompts.jsonl"), "--out", str(tmp_path / "golden"), "--max-new-tokens", "4",
            "--shard-size", "4"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rows = read_jsonl(tmp_path / "golden" / "pairs.jsonl")
    assert len(rows) == 6
    assert {"chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps"} <= set(rows[0])


def test_logps_are_those_of_the_trainer_tokenization(tiny):
    """Stored log-probs = log pi of tokenizer(text) + [eos] (the ids `isdaa train` builds) for a finished
    sample, and of tokenizer(text) alone for one cut at max_new_tokens (flagged unfinished: never
    completed with an EOS it did not emit)."""
    from isdaa.evaluate.label import label_pairs
    from isdaa.evaluate.sampling import encode_prompts
    from isdaa.logprobs import score_responses

    model, tok = tiny
    prompts = [f"w{i} good" for i in range(40)]
    rows = label_pairs(model, tok, prompts, hashed_reward, n=2, max_new_tokens=30, seed=0)
    # the text keeps sampled special tokens and no EOS is added to an unfinished sample: every trainer id
    # sequence is the sampled one, finished (EOS) or not (both cases occur)
    assert all(r["chosen_ids_exact"] and r["rejected_ids_exact"] for r in rows)
    assert not all(r["chosen_finished"] and r["rejected_finished"] for r in rows)
    pids = encode_prompts(tok, [r["prompt"] for r in rows])
    for col in ("chosen", "rejected"):
        ids = [x + [tok.eos_token_id] * r[f"{col}_finished"]
               for x, r in zip(tok([r[col] for r in rows], add_special_tokens=False)["input_ids"], rows)]
        expect = score_responses(model, pids, ids)
        np.testing.assert_allclose([r[f"{col}_logps"] for r in rows], expect, atol=1e-3)
