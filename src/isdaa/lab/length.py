"""The "grounded detail" task, where length is the route to over-optimization (`isdaa.lab.task.Task`).

In real summarization, over-optimization shows up mostly as verbosity: the golden reward falls while
responses grow (the DAA scaling-law studies). This task isolates that route. A prompt is 12 distinct
content words out of 24, then the separator `=`:

    prompt    c3 c17 c0 c9 c21 c4 c12 c8 c1 c15 c6 c20 =
    ideal     c3 c17 c0 c9 c21 c4 c12 c8 <eos>          (any 8 distinct prompt words)

The response should give useful detail (distinct words of the prompt) up to an optimal length L* = 8
and stop there:

    r*(x, y) = 0.5 * grounded - 0.5 * noise - 0.75 * max(0, |y| - 8) - 2 * no_eos

    grounded   first occurrences of prompt words in y (useful content: each adds 0.5)
    noise      every other token of y: a word absent from the prompt, a repeat, a sampled special token
    |y|        response tokens without EOS, special ones included (`task.response_tokens`)
    no_eos     1 when y was cut at the length limit (16 tokens) instead of ending with EOS

Every token is grounded or noise. With grounded words only, r* rises by 0.5 per word up to 4.0 at 8 words
and falls by 0.25 per word beyond (-0.75 + 0.5): useful content up to the optimum, verbosity past it,
and a response that never stops loses 2 more. A prompt has 12 words, so the policy can grow past the
optimum with grounded words alone: length, not hallucination, is the cheap way up and the way down.

Demonstrations are short of the optimum: 2-7 distinct prompt words (uniform) 90% of the time, 8-10
otherwise, in prompt order or shuffled, occasionally a word absent from the prompt or a repeat. pi_ref
therefore samples mostly below 8 words, so the longer response of a pair tends to be the chosen one and
the pairs rarely show what lies past the optimum: the design lets an offline DAA extrapolate "longer is
better" beyond it (R-DPO, SimPO and a length-normalized IS ratio are the methods meant for this case).

Measured (the `calibrate` preset, 2026-12-06, seed 0): pi_ref's samples hold 4.4 words (0.46 of them
noise); in D_golden the chosen response is only 0.27 words longer than the rejected one (5.34 vs 5.07:
pi_ref's noise words decide more labels than length does). DPO at beta 0.01 lengthened its responses to
6.6 words by its peak (win rate 0.72 at 1e-4), then shortened them again (5.0 words, 0.58 final); no
run passed 8 words. So, as calibrated, DPO over-optimizes this task by losing grounded words, not by
extrapolating length: the length route is designed in but not yet what happens.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from isdaa.lab.task import ModelShape, Task, response_tokens

WORDS = tuple(f"c{i}" for i in range(24))
SEP = "="


@dataclass(frozen=True)
class LengthDemoStyle:
    """How the SFT demonstrations are drawn (probabilities per demonstration)."""

    short: tuple[int, int] = (2, 7)  # lengths (distinct prompt words) of most demonstrations
    long: tuple[int, int] = (8, 10)  # ... and of the others
    p_long: float = 0.1
    p_shuffle: float = 0.3  # the words in random order instead of prompt order
    p_noise: float = 0.1  # insert a word absent from the prompt
    p_repeat: float = 0.1  # repeat one listed word


@dataclass(frozen=True)
class LengthReward:
    """The reward's coefficients (the module docstring's formula)."""

    grounded: float = 0.5
    noise: float = 0.5
    over: float = 0.75
    optimum: int = 8
    no_eos: float = 2.0


@dataclass(frozen=True)
class LengthTask(Task):
    name: str = "length"
    summary: str = ("a prompt holds 12 distinct content words; the response should give useful detail (distinct "
                    "prompt words) up to an optimal length of 8 words and stop; each word past 8 costs more than "
                    "it adds, and pi_ref's samples fall mostly short of 8.")
    content: tuple[str, ...] = WORDS
    sep: str = SEP
    words: tuple[str, ...] = WORDS + (SEP,)  # + 4 specials = 29 tokens
    prompt_words: int = 13  # 12 distinct content words + SEP (+ BOS = 14 ids)
    max_response_tokens: int = 16  # EOS included: 14 + 16 = 30 <= the model's 32 positions
    component_names: tuple[str, ...] = ("grounded", "noise", "over", "no_eos", "length")
    reward_formula: str = "0.5*grounded - 0.5*noise - 0.75*max(0,|y|-8) - 2*no_eos"
    model: ModelShape = ModelShape()
    demo: LengthDemoStyle = LengthDemoStyle()
    coef: LengthReward = LengthReward()
    version: int = 1

    def reward_components(self, prompt: str, response: str) -> dict:
        allowed = set(prompt.split()) - {self.sep}
        toks, ended = response_tokens(response, self.max_response_tokens)
        seen: set[str] = set()
        for tok in toks:
            if tok in allowed and tok not in seen:
                seen.add(tok)
        c = self.coef
        grounded, noise = len(seen), len(toks) - len(seen)
        over = max(0, len(toks) - c.optimum)
        no_eos = 0 if ended else 1
        reward = c.grounded * grounded - c.noise * noise - c.over * over - c.no_eos * no_eos
        return {"reward": round(reward, 10), "grounded": grounded, "noise": noise, "over": over,
                "no_eos": no_eos, "length": len(toks)}

    def sample_prompt(self, rng: random.Random) -> str:
        return " ".join(rng.sample(self.content, self.prompt_words - 1) + [self.sep])

    def ideal_response(self, prompt: str) -> str:
        return " ".join(prompt.split()[: self.coef.optimum])

    def sample_demonstration(self, prompt: str, rng: random.Random) -> str:
        style = self.demo
        words = [w for w in prompt.split() if w != self.sep]
        n = rng.randint(*(style.long if rng.random() < style.p_long else style.short))
        idx = sorted(rng.sample(range(len(words)), min(n, len(words))))
        out = [words[i] for i in idx]
        if rng.random() < style.p_shuffle:
            rng.shuffle(out)
        if rng.random() < style.p_repeat:
            out.insert(rng.randint(0, len(out)), rng.choice(out))
        if rng.random() < style.p_noise:
            out.insert(rng.randint(0, len(out)), rng.choice([w for w in self.content if w not in words]))
        return " ".join(out)

    def example_cells(self, prompt: str) -> dict[str, str]:
        return {"optimum": f"{self.coef.optimum} words"}

    def describe(self) -> dict:
        return {"content_words": list(self.content), "separator": self.sep, "demonstrations": asdict(self.demo),
                "reward": asdict(self.coef), "version": self.version}


def golden_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The default length task's r*, as a reward spec (`isdaa.lab.length:golden_reward`)."""
    return LengthTask().golden_reward(prompts, responses)


__all__ = ["LengthDemoStyle", "LengthReward", "LengthTask", "golden_reward"]
