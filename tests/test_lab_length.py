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
        # 8 distinct prompt words: 0.5 * 8 = 4.0, the optimum
        ("c3 c17 c0 c9 c21 c4 c12 c8", 4.0, dict(grounded=8, noise=0, over=0, no_eos=0)),
        # 3 words: 1.5 (short of the optimum: every useful word adds 0.5)
        ("c3 c17 c0", 1.5, dict(grounded=3, length=3)),
        # 10 words: 0.5 * 10 - 0.75 * 2 = 3.5 (past the optimum each word costs 0.25 net)
        ("c3 c17 c0 c9 c21 c4 c12 c8 c1 c15", 3.5, dict(grounded=10, over=2)),
        # a repeat and a word absent from the prompt are noise: 0.5 * 2 - 0.5 * 2 = 0
        ("c3 c3 c17 c5", 0.0, dict(grounded=2, noise=2)),
        # a sampled <pad> is a token of the response (noise): 0.5 * 2 - 0.5 = 0.5
        ("c3 <pad> c17", 0.5, dict(grounded=2, noise=1, length=3)),
        # 16 tokens, cut without EOS: 12 grounded + 4 repeats: 6 - 2 - 0.75 * 8 - 2 = -4
        ("c3 c17 c0 c9 c21 c4 c12 c8 c1 c15 c6 c20 c3 c3 c3 c3", -4.0, dict(grounded=12, noise=4, over=8, no_eos=1)),
        # an explicit <eos> ends the response; the padding after it is not part of it
        ("c3 c17 <eos> <pad> <pad>", 1.0, dict(grounded=2, length=2, no_eos=0)),
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
    """With grounded words only, r*(n) = 0.5 n for n <= 8, 0.5 n - 0.75 (n - 8) beyond: maximal at 8."""
    words = PROMPT.split()[:-1]
    rewards = [task.golden_reward([PROMPT], [" ".join(words[:n])])[0] for n in range(13)]
    assert int(np.argmax(rewards)) == 8 and rewards[8] == 4.0
    assert rewards == pytest.approx([0.5 * n if n <= 8 else 0.5 * n - 0.75 * (n - 8) for n in range(13)])


def test_demonstrations_fall_short_and_chosen_responses_are_longer():
    """Demonstrations: 2-7 words 90% of the time (mean about 5.2 with the occasional repeat / noise word),
    8-10 otherwise. Two demonstrations per prompt labelled by Bradley-Terry on r*: the chosen one is longer
    on average (the pairs teach "longer is better" and rarely show what lies past 8 words)."""
    check_task(task)
    assert load_task("length") == task
    rows = task.make_sft_rows(4000, seed=1)
    lengths = np.array([len(r["completion"].split()) for r in rows])
    assert 4.5 < lengths.mean() < 6.0 and 0.05 < (lengths >= 8).mean() < 0.25 and lengths.max() < 16
    rng = random.Random(0)
    chosen, rejected = [], []
    for _ in range(4000):
        p = task.sample_prompt(rng)
        a, b = task.sample_demonstration(p, rng), task.sample_demonstration(p, rng)
        ra, rb = task.golden_reward([p, p], [a, b])
        c, r = (a, b) if rng.random() < 1 / (1 + math.exp(-(ra - rb))) else (b, a)
        chosen.append(len(c.split()))
        rejected.append(len(r.split()))
    assert np.mean(chosen) - np.mean(rejected) > 0.8
    tok = task.build_tokenizer()
    assert len(tok(PROMPT)["input_ids"]) == task.max_prompt_length == 14 and task.max_length == 30
