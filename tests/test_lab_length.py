"""The length task (isdaa.lab.length): its golden reward against hand computations, and the property that
makes length the route to over-optimization: pi_ref's demonstrations fall short of the optimum, so the
Bradley-Terry chosen response is the longer one on average."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from isdaa.lab.length import LengthTask
from isdaa.lab.task import check_task, load_task

task = LengthTask()
PROMPT = "c3 c17 c0 c9 c21 c4 c12 c8 c1 c15 c6 c20 ="  # 12 distinct content words


@pytest.mark.parametrize(
    "response, expected, parts",
    [
        # 8 distinct prompt words: 1 * 8 = 8, the optimum
        ("c3 c17 c0 c9 c21 c4 c12 c8", 8.0, dict(grounded=8, noise=0, over=0, no_eos=0)),
        # 3 words: 3 (short of the optimum: every useful word adds 1)
        ("c3 c17 c0", 3.0, dict(grounded=3, length=3)),
        # 10 words: 10 - 2 * 2 = 6 (past the optimum each word costs 1 net)
        ("c3 c17 c0 c9 c21 c4 c12 c8 c1 c15", 6.0, dict(grounded=10, over=2)),
        # a repeat and a word absent from the prompt are noise: 2 - 2 = 0
        ("c3 c3 c17 c5", 0.0, dict(grounded=2, noise=2)),
        # a sampled <pad> is a token of the response (noise): 2 - 1 = 1
        ("c3 <pad> c17", 1.0, dict(grounded=2, noise=1, length=3)),
        # 16 tokens, cut without EOS: 12 grounded + 4 repeats: 12 - 4 - 2 * 8 - 2 = -10
        ("c3 c17 c0 c9 c21 c4 c12 c8 c1 c15 c6 c20 c3 c3 c3 c3", -10.0, dict(grounded=12, noise=4, over=8, no_eos=1)),
        # an explicit <eos> ends the response; the padding after it is not part of it
        ("c3 c17 <eos> <pad> <pad>", 2.0, dict(grounded=2, length=2, no_eos=0)),
        ("", 0.0, dict(length=0, no_eos=0)),
    ],
)
def test_length_reward_hand_computed(response, expected, parts):
    comp = task.reward_components(PROMPT, response)
    assert comp["reward"] == pytest.approx(expected, abs=1e-9)
    for k, v in parts.items():
        assert comp[k] == v, k
    assert comp["grounded"] + comp["noise"] == comp["length"]
    assert task.golden_reward([PROMPT], [response]) == [pytest.approx(expected, abs=1e-9)]


def test_reward_peaks_at_the_optimal_length():
    """With grounded words only, r*(n) = n for n <= 8, n - 2 (n - 8) = 16 - n beyond: maximal at 8; 12 grounded
    words score 4, below a 5-word response."""
    words = PROMPT.split()[:-1]
    rewards = [task.golden_reward([PROMPT], [" ".join(words[:n])])[0] for n in range(13)]
    assert int(np.argmax(rewards)) == 8 and rewards[8] == 8.0
    assert rewards == pytest.approx([n if n <= 8 else 16 - n for n in range(13)])


def _bt_pairs(n: int, seed: int = 0) -> list[dict]:
    """Two demonstrations per prompt labelled by Bradley-Terry on r* (pairs of identical responses dropped)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        p = task.sample_prompt(rng)
        a, b = task.sample_demonstration(p, rng), task.sample_demonstration(p, rng)
        if a == b:
            continue
        ra, rb = task.golden_reward([p, p], [a, b])
        c, r = (a, b) if rng.random() < 1 / (1 + math.exp(-(ra - rb))) else (b, a)
        rows.append({"prompt": p, "chosen": c, "rejected": r})
    return rows


def test_demonstrations_fall_short_and_chosen_responses_are_longer():
    """Demonstrations: the prompt's first 1-7 words 90% of the time (mean about 4.7 words with the occasional
    repeat / noise word), 9-11 otherwise. Two demonstrations per prompt labelled by Bradley-Terry on r*: the
    chosen one is clearly longer and most labels are decided by length alone (the design checks hold on
    the demonstrations; the label stage measures them on pi_ref's own samples)."""
    check_task(task)
    assert load_task("length") == task
    rows = task.make_sft_rows(4000, seed=1)
    lengths = np.array([len(r["completion"].split()) for r in rows])
    assert 4.2 < lengths.mean() < 5.2 and 0.06 < (lengths > 8).mean() < 0.15 and lengths.max() < 16
    prompt_words = [r["prompt"].split()[:-1] for r in rows]
    in_order = [r["completion"].split() == w[: len(r["completion"].split())] for r, w in zip(rows, prompt_words)]
    assert np.mean(in_order) > 0.9  # a prefix of the prompt unless a repeat or noise word was inserted
    stats = task.pair_statistics(_bt_pairs(4000))
    assert stats["length_gap"] > 1.5 and stats["longer_chosen"] > 0.75 and stats["length_decided"] > 0.75
    assert all(v.endswith("holds") for v in stats["design_checks"].values())
    tok = task.build_tokenizer()
    assert len(tok(PROMPT)["input_ids"]) == task.max_prompt_length == 14 and task.max_length == 30


def test_pair_statistics_hand_computed():
    """Three pairs: (5 clean words > 2 clean words), (3 clean < 10 clean: the shorter chosen), (4 words with a
    noise word vs 4 clean: noise decides, equal lengths). Lengths chosen 5, 3, 4 (mean 4); rejected 2, 10, 4
    (mean 16/3); gap -4/3. Unequal pairs: 2, the chosen longer in 1. Clean on both sides: pairs 1 and 2 (2/3).
    Past 8 words: 1 of 6 responses."""
    w = PROMPT.split()[:-1]
    rows = [{"prompt": PROMPT, "chosen": " ".join(w[:5]), "rejected": " ".join(w[:2])},
            {"prompt": PROMPT, "chosen": " ".join(w[:3]), "rejected": " ".join(w[:10])},
            {"prompt": PROMPT, "chosen": " ".join(w[:4]), "rejected": " ".join(w[:3] + ["c5"])}]
    st = task.pair_statistics(rows)
    assert st["chosen_length"] == pytest.approx(4.0) and st["rejected_length"] == pytest.approx(16 / 3)
    assert st["length_gap"] == pytest.approx(-4 / 3) and st["longer_chosen"] == pytest.approx(0.5)
    assert st["length_decided"] == pytest.approx(2 / 3) and st["past_optimum"] == pytest.approx(1 / 6)
    assert st["noise_per_response"] == pytest.approx(1 / 6)
    assert st["design_checks"]["length_gap"].endswith("FAILS") and st["design_checks"]["past_optimum"].endswith("FAILS")
    assert task.pair_statistics([]) == {}
