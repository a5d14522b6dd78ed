"""Shared fixtures: a tiny tokenizer trained on generated text and a tiny random-init Llama, saved
locally once per test session (nothing is downloaded)."""

from __future__ import annotations

import random

import pytest
import torch

torch.set_num_threads(1)  # the CI machine has 2 cores; tests run faster single-threaded


def generated_corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(60)] + ["good", "bad", "yes", "no", "the", "a", "is"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Directory holding a tiny Llama + word tokenizer (save_pretrained layout)."""
    from isdaa.tiny import build_tiny_llama, build_word_tokenizer, save_tiny

    tok = build_word_tokenizer(corpus=generated_corpus(), vocab_size=128)
    model = build_tiny_llama(
        vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, seed=0,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    return save_tiny(model, tok, tmp_path_factory.mktemp("tiny") / "model")
