"""Packed pairs on model families that read a token's index in the row (issue: GPT-Neo's local attention
gave a rejected log-prob off by 0.046 nats, silently; ALiBi Falcon crashed with "too many values to unpack").

`packed_pairs_supported` refuses such families up front (`row_index_attention` says why), and the trainer
compares packed with unpacked log-probs on its first batch for every model it packs, so a family the static
rule misjudges falls back to separate rows with one warning. Whatever the path, a run with pack_pairs on logs
exactly what the same run with pack_pairs off logs.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from isdaa.api import train
from isdaa.config import load_config
from isdaa.io import read_jsonl
from isdaa.logprobs import packed_pairs_supported, pair_response_logps, response_logps, row_index_attention


def family(name, vocab, tok):
    """Tiny random-init models of families whose attention depends on the row index."""
    from transformers import FalconConfig, FalconForCausalLM, GPTNeoConfig, GPTNeoForCausalLM

    ids = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id}
    torch.manual_seed(0)
    if name == "gpt-neo-local":  # the real model's window is 256; 4 makes short test rows exceed it
        cfg = GPTNeoConfig(vocab_size=vocab, hidden_size=16, num_layers=2, num_heads=2, window_size=4,
                           attention_types=[[["global", "local"], 1]], max_position_embeddings=64, **ids)
        cfg._attn_implementation = "eager"  # GPT-Neo has no sdpa path
        return GPTNeoForCausalLM(cfg)
    cfg = FalconConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, alibi=True,
                       new_decoder_architecture=False, multi_query=False, **ids)
    cfg._attn_implementation = "sdpa"
    return FalconForCausalLM(cfg)


FAMILIES = ["gpt-neo-local", "falcon-alibi"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from conftest import generated_corpus

    from isdaa.tiny import build_word_tokenizer

    tok = build_word_tokenizer(corpus=generated_corpus(), vocab_size=128)
    out = {}
    for name in FAMILIES:
        path = tmp_path_factory.mktemp(name) / "model"
        model = family(name, len(tok), tok)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = (path, model.eval(), tok)
    return out


def batch_of(tok, n=3, seed=0):
    from isdaa.data import collate_pref, tokenize_pref

    rng = random.Random(seed)
    rows = [{"prompt": " ".join(f"w{rng.randrange(60)}" for _ in range(5)), "chosen": "good yes w1 w2 w3",
             "rejected": "bad no w4 w5 w6 w7"} for _ in range(n)]
    return collate_pref(tokenize_pref(rows, tok, 48, 16), tok.pad_token_id)


@pytest.mark.parametrize("name", FAMILIES)
def test_families_that_read_the_row_index_are_refused_up_front(saved, name):
    _, model, tok = saved[name]
    assert not packed_pairs_supported(model)
    assert row_index_attention(model.config) == {"gpt-neo-local": "per-layer attention types",
                                                 "falcon-alibi": "ALiBi position biases"}[name]


def test_gpt_neo_local_window_really_misreads_packing(saved):
    """Why the refusal: forced through the packed layout, the rejected log-probs are wrong (the window is
    sliced by row index), while the chosen ones, which sit where they would unpacked, are right."""
    _, model, tok = saved["gpt-neo-local"]
    b = batch_of(tok)
    with torch.no_grad():
        packed = pair_response_logps(model, b["input_ids"], b["attention_mask"], b["response_mask"], 3)
        plain = response_logps(model, b["input_ids"], b["attention_mask"], b["response_mask"])
    torch.testing.assert_close(packed[:3], plain[:3], rtol=1e-5, atol=1e-5)
    assert float((packed[3:] - plain[3:]).abs().max()) > 1e-3


def cfg(path, tmp_path, name, rows, **over):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"model": {"name_or_path": str(path)}, "data": {"train": str(data), "max_length": 48,
            "max_prompt_length": 16}, "optim": {"lr": 1e-3, "warmup_steps": 0}, "output_dir": str(tmp_path / name),
            "method": "dpo", "batch_size": 4, "micro_batch_size": 4, "max_steps": 2, "logging_steps": 1,
            "progress": False, "num_threads": 1, "mixed_precision": "no", "ref_cache_dir": str(tmp_path / "cache"),
            **over}
    return load_config(base, kind="pref")


def rows(n=8, seed=1):
    rng = random.Random(seed)
    return [{"prompt": " ".join(f"w{rng.randrange(60)}" for _ in range(5)),
             "chosen": f"good yes w{rng.randrange(60)} w{rng.randrange(60)}",
             "rejected": f"bad no w{rng.randrange(60)} w{rng.randrange(60)} w{rng.randrange(60)}"} for _ in range(n)]


def logged(c):
    return [{k: r[k] for k in ("loss", "logps/chosen", "logps/rejected", "grad_norm")}
            for r in read_jsonl(f"{c.output_dir}/metrics.jsonl")]


@pytest.mark.parametrize("force", [False, True], ids=["static-rule", "runtime-check"])
@pytest.mark.parametrize("name", FAMILIES)
def test_pack_pairs_on_logs_what_pack_pairs_off_logs(saved, tmp_path, name, force, monkeypatch):
    """With the static rule (`static-rule`) and with it forced to say yes (`runtime-check`: the first-batch
    comparison must then catch the family), pack_pairs on trains exactly like pack_pairs off."""
    import isdaa.train.pref as pref

    path = saved[name][0]
    off = cfg(path, tmp_path, "off", rows(), pack_pairs=False)
    train(off)
    if force:
        monkeypatch.setattr(pref, "packed_pairs_supported", lambda model: True)
        with pytest.warns(UserWarning, match="pack_pairs: .* on the first batch; pairs go through as separate rows"):
            train(cfg(path, tmp_path, "on", rows(), pack_pairs=True))
    else:
        train(cfg(path, tmp_path, "on", rows(), pack_pairs=True))
    assert logged(off) == logged(cfg(path, tmp_path, "on", rows(), pack_pairs=True))


def test_a_family_that_packs_correctly_keeps_packing(tiny_dir, tmp_path, monkeypatch):
    """Llama passes both the static rule and the first-batch comparison: packed pairs stay on (the packed
    forward is called on later batches) and no warning is given."""
    import warnings

    import isdaa.train.pref as pref

    calls = []
    real = pref.pair_response_logps
    monkeypatch.setattr(pref, "pair_response_logps", lambda *a, **k: calls.append(1) or real(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*behavior log-probs")
        train(cfg(tiny_dir, tmp_path, "llama", rows()))
    assert len(calls) >= 1 + 2  # the check, then each of the 2 training steps
