"""The key-token task (isdaa.lab.keytoken): golden reward against hand computations, data generators, BT
labels, and what the sampler's text gives the reward."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from isdaa.lab.keytoken import KeyTokenTask

task = KeyTokenTask()

PROMPT = "f3 k5 f0 f0 k1 f7 k9 f2 f1 f6 ="  # keys k5 k1 k9 (K = 3)


@pytest.mark.parametrize(
    "response, expected, parts",
    [
        # ideal: 3 * 3/3 = 3
        ("k5 k1 k9", 3.0, dict(coverage=1.0, hallucinated=0, repeated=0, beyond=0, no_eos=0)),
        # order does not matter
        ("k9 k5 k1", 3.0, dict(coverage=1.0)),
        # one key missing: 3 * 2/3 = 2
        ("k5 k1", 2.0, dict(coverage=2 / 3)),
        # a filler is hallucinated: 3 - 0.5 = 2.5
        ("k5 k1 k9 f0", 2.5, dict(hallucinated=1, beyond=0)),
        # a key absent from the prompt is hallucinated: 3*2/3 - 0.5 = 1.5
        ("k5 k2 k1", 1.5, dict(hallucinated=1, coverage=2 / 3)),
        # repetition: 3*1/3 - 0.5 = 0.5
        ("k5 k5", 0.5, dict(repeated=1)),
        # 7 tokens, K + 2 = 5 allowed: 3 - 0.5*4 (repeats) - 0.4*2 (beyond) = 0.2
        ("k5 k1 k9 k5 k5 k5 k5", 0.2, dict(repeated=4, beyond=2)),
        # empty response (EOS at once): 0
        ("", 0.0, dict(coverage=0.0, no_eos=0)),
        # 16 tokens = the generation limit, cut without EOS:
        # 3*1/3 - 0.5*15 - 0.4*(16-5) - 2 = 1 - 7.5 - 4.4 - 2 = -12.9
        (" ".join(["k5"] * 16), -12.9, dict(repeated=15, beyond=11, no_eos=1)),
        # an explicit <eos> ends the response; what follows is ignored: 3*2/3 = 2
        ("k5 k1 <eos> k9 k9", 2.0, dict(coverage=2 / 3, no_eos=0, length=2)),
    ],
)
def test_golden_reward_hand_computed(response, expected, parts):
    comp = task.reward_components(PROMPT, response)
    assert comp["reward"] == pytest.approx(expected, abs=1e-9)
    for k, v in parts.items():
        assert comp[k] == pytest.approx(v), k
    assert task.golden_reward([PROMPT], [response]) == [pytest.approx(expected, abs=1e-9)]


def test_golden_reward_protocol_and_token_partition():
    rng = random.Random(0)
    prompts = task.make_prompts(200, seed=1)
    words = task.words + ("<pad>", "<unk>", "<bos>")  # sampled specials are tokens of the response too
    responses = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 16))) for _ in prompts]
    rewards = task.golden_reward(prompts, responses)
    assert len(rewards) == 200 and all(isinstance(r, float) and math.isfinite(r) for r in rewards)
    for p, r in zip(prompts, responses):
        c = task.reward_components(p, r)
        # every token is a first key occurrence, a repeat, or a hallucination
        assert c["covered"] + c["repeated"] + c["hallucinated"] == c["length"]
        assert c["reward"] <= 3.0
    with pytest.raises(ValueError):
        task.golden_reward(prompts[:2], responses[:1])


def test_ties_are_exact():
    # 3 * 2/3 and 2.0 must compare equal (ties count 1/2 in the win rate)
    a = task.golden_reward([PROMPT], ["k5 k1"])[0]
    b = task.golden_reward(["f0 k1 k2 f0 f0 f0 f0 f0 f0 f0 ="], ["k1 k2 f3 f3"])[0]  # 3 - 0.5*2 = 2
    assert a == b == 2.0


def test_prompts_and_demonstrations():
    prompts = task.make_prompts(500, seed=3)
    assert prompts == task.make_prompts(500, seed=3)  # seeded
    for p in prompts:
        toks = p.split()
        assert len(toks) == task.prompt_words and toks[-1] == task.sep
        assert task.keys_per_prompt[0] <= len(task.prompt_keys(p)) <= task.keys_per_prompt[1]
        assert len(task.prompt_keys(p)) == sum(t in task.keys for t in toks)  # keys are distinct
        assert task.reward_components(p, task.ideal_response(p))["reward"] == 3.0
    rows = task.make_sft_rows(2000, seed=0)
    r = np.array(task.golden_reward([x["prompt"] for x in rows], [x["completion"] for x in rows]))
    # mediocre to good: below the ideal 3 on average, with some penalized mistakes
    assert 1.5 < r.mean() < 2.8
    comps = [task.reward_components(x["prompt"], x["completion"]) for x in rows]
    assert 0.02 < np.mean([c["repeated"] > 0 for c in comps]) < 0.3
    assert 0.05 < np.mean([c["hallucinated"] > 0 for c in comps]) < 0.6


def test_tokenizer_and_model_shapes():
    tok = task.build_tokenizer()
    assert len(tok) == len(task.words) + 4
    ids = tok(PROMPT)["input_ids"]
    assert len(ids) == task.max_prompt_length == 12 and ids[0] == tok.bos_token_id  # fixed length: no padding
    resp = "k5 k1 k9"
    assert tok.decode(tok(resp, add_special_tokens=False)["input_ids"]) == resp  # exact round trip
    model = task.build_model(tok)
    assert model.config.vocab_size == len(tok)
    assert model.config.max_position_embeddings >= task.max_length == 28
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 250_000


def test_bt_labels_match_sigmoid_of_reward_difference():
    """P(first response chosen) = sigmoid(r1 - r2) on the golden reward's values, over many draws."""
    from isdaa.evaluate.label import bt_first_wins

    pairs = [("k5 k1 k9", "k5 k1"), ("k5 k1", "k5 k5"), ("k5 k1 k9 f0", "k5 k1 k9"), ("k5", "k5 k1 k9")]
    rng = np.random.default_rng(0)
    n = 40_000
    for a, b in pairs:
        r1, r2 = task.golden_reward([PROMPT] * 2, [a, b])
        wins = bt_first_wins(np.full(n, r1), np.full(n, r2), rng, "bt")
        p = 1 / (1 + math.exp(-(r1 - r2)))
        se = math.sqrt(p * (1 - p) / n)
        assert abs(wins.mean() - p) < 4 * se, (a, b, wins.mean(), p)


def _sampled(rows: list[list[int]]):
    """The real sampler's texts for fixed generated ids: `model.generate` returns the prompt + `rows`
    (what HF generate does after EOS: pads), everything after it (cut at EOS, decoding) is the sampler's."""
    import torch

    from isdaa.evaluate.sampling import sample_responses

    tok = task.build_tokenizer()
    model = task.build_model(tok)

    def generate(input_ids, attention_mask=None, logits_processor=None, **kwargs):
        return torch.cat([input_ids, torch.tensor(rows[: input_ids.shape[0]])], dim=1)

    model.generate = generate
    return tok, sample_responses(model, tok, [PROMPT], n=len(rows), max_new_tokens=task.max_response_tokens)


def test_sampled_pad_is_hallucinated_and_post_eos_padding_never_reaches_the_reward():
    """The golden reward scores what was sampled, by token (README: sampled special tokens count as
    hallucinated). PROMPT has K = 3 keys.
    - 16 sampled <pad>, no EOS: hallucinated 16, beyond 16 - (3 + 2) = 11, no EOS:
      -0.5*16 - 0.4*11 - 2 = -8 - 4.4 - 2 = -14.4 (not 0, the score of an empty response ended by EOS).
    - k5 k1 <eos> then generate's padding: the padding is not part of the response: 3*2/3 = 2.0.
    - k5 <pad> k1 <eos> + padding: the sampled <pad> before EOS is hallucinated: 2 - 0.5 = 1.5.
    - <eos> at once + padding: the empty response, 0.0."""
    tok = task.build_tokenizer()
    pad, eos = tok.pad_token_id, tok.eos_token_id
    k5, k1 = tok.convert_tokens_to_ids("k5"), tok.convert_tokens_to_ids("k1")
    n = task.max_response_tokens
    rows = [[pad] * n, [k5, k1, eos] + [pad] * (n - 3), [k5, pad, k1, eos] + [pad] * (n - 4), [eos] + [pad] * (n - 1)]
    _, samples = _sampled(rows)
    assert [s.finished for s in samples] == [False, True, True, True]
    comps = [task.reward_components(PROMPT, s.text) for s in samples]
    assert [c["reward"] for c in comps] == pytest.approx([-14.4, 2.0, 1.5, 0.0], abs=1e-9)
    assert (comps[0]["hallucinated"], comps[0]["beyond"], comps[0]["no_eos"], comps[0]["length"]) == (16, 11, 1, 16)
    assert comps[2]["hallucinated"] == 1 and comps[2]["length"] == 3
    assert task.golden_reward([PROMPT] * 4, [s.text for s in samples]) == pytest.approx([-14.4, 2.0, 1.5, 0.0])
    # the same response with or without what followed its EOS: identical reward
    assert task.golden_reward([PROMPT] * 2, ["k5 k1", "k5 k1 <eos> <pad> <pad>"]) == [2.0, 2.0]
