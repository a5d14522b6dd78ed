"""Sampling: deterministic under a seed, global RNG untouched, EOS-terminated exact token ids."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval(), AutoTokenizer.from_pretrained(tiny_dir)


PROMPTS = ["w1 w2 good", "the w3 is bad yes", "a", "no w4 w5 w6 w7 w8"]  # different lengths: left padding


def test_deterministic_under_seed_and_global_rng_untouched(tiny):
    from isdaa.evaluate.sampling import sample_responses

    model, tok = tiny
    state = torch.random.get_rng_state()
    a = sample_responses(model, tok, PROMPTS, n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7,
                         batch_size=5)
    assert torch.equal(state, torch.random.get_rng_state())
    b = sample_responses(model, tok, PROMPTS, n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7,
                         batch_size=5)
    c = sample_responses(model, tok, PROMPTS, n=3, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=8,
                         batch_size=5)
    assert [s.response_ids for s in a] == [s.response_ids for s in b]
    assert [s.response_ids for s in a] != [s.response_ids for s in c]
    assert [s.prompt_index for s in a] == [i for i in range(len(PROMPTS)) for _ in range(3)]


def test_eos_terminated_ids(tiny):
    from isdaa.evaluate.sampling import sample_responses

    model, tok = tiny
    eos = tok.eos_token_id
    samples = sample_responses(model, tok, PROMPTS * 16, n=2, temperature=1.0, top_p=1.0, max_new_tokens=40,
                               seed=0, batch_size=32)
    finished = [s for s in samples if s.finished]
    unfinished = [s for s in samples if not s.finished]
    assert finished and unfinished  # the random model emits EOS now and then
    for s in finished:
        assert s.response_ids[-1] == eos and eos not in s.response_ids[:-1]
        assert s.length == len(s.response_ids)
    for s in unfinished:
        assert len(s.response_ids) == 40 and eos not in s.response_ids
    # the text is what was emitted (special tokens included, the terminating EOS not): it re-tokenizes
    # to exactly the sampled ids, so training on it sees the sequence the sample's log-prob describes
    for s in samples:
        again = tok(s.text, add_special_tokens=False)["input_ids"] + ([eos] if s.finished else [])
        assert again == s.response_ids, (s.text, s.response_ids)
    assert any(set(s.response_ids) & (set(tok.all_special_ids) - {eos}) for s in samples)  # the case that matters


def test_left_padding_matches_unpadded(tiny):
    """Greedy decoding of a prompt inside a left-padded batch equals decoding it alone."""
    from isdaa.evaluate.sampling import sample_responses

    model, tok = tiny
    batch = sample_responses(model, tok, PROMPTS, n=1, temperature=0, max_new_tokens=8, batch_size=4)
    alone = [sample_responses(model, tok, [p], n=1, temperature=0, max_new_tokens=8)[0] for p in PROMPTS]
    assert [s.response_ids for s in batch] == [s.response_ids for s in alone]


def test_vllm_backend_is_optional(tiny):
    pytest.importorskip("vllm")  # never installed on CPU CI: the backend is lazy


def test_recorded_logps_match_forward_and_generation_config_is_ignored(tiny):
    """Sample.logp (raw logits during generation, even at T = 0.7 / top-p) equals the untempered
    log-prob of a full forward on the exact ids; a checkpoint's repetition penalty is not applied."""
    from isdaa.evaluate.sampling import encode_prompts, sample_responses
    from isdaa.logprobs import score_responses

    model, tok = tiny
    samples = sample_responses(model, tok, PROMPTS, n=4, temperature=0.7, top_p=0.9, max_new_tokens=10,
                               seed=3, batch_size=16)
    pids = encode_prompts(tok, PROMPTS)
    fwd = score_responses(model, [pids[s.prompt_index] for s in samples], [s.response_ids for s in samples])
    assert max(abs(s.logp - f) for s, f in zip(samples, fwd)) < 1e-3
    saved = model.generation_config
    try:
        model.generation_config.repetition_penalty = 50.0
        again = sample_responses(model, tok, PROMPTS, n=4, temperature=0.7, top_p=0.9, max_new_tokens=10,
                                 seed=3, batch_size=16)
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert [s.response_ids for s in again] == [s.response_ids for s in samples]
    assert model.generation_config is saved
