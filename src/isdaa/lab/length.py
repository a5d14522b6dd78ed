"""The "grounded detail" task, where length is the route to over-optimization (`isdaa.lab.task.Task`).

In real summarization, over-optimization shows up mostly as verbosity: the golden reward falls while
responses grow (the DAA scaling-law studies). This task isolates that route. A prompt is 12 distinct
content words out of 24, then the separator `=`:

    prompt    c3 c17 c0 c9 c21 c4 c12 c8 c1 c15 c6 c20 =
    ideal     c3 c17 c0 c9 c21 c4 c12 c8 <eos>          (any 8 distinct prompt words)

The response should give useful detail (distinct words of the prompt) up to an optimal length L* = 8
and stop there:

    r*(x, y) = grounded - noise - 2 * max(0, |y| - 8) - 2 * no_eos

    grounded   first occurrences of prompt words in y (useful content: each adds 1)
    noise      every other token of y: a word absent from the prompt, a repeat, a sampled special token
    |y|        response tokens without EOS, special ones included (`task.response_tokens`)
    no_eos     1 when y was cut at the length limit (16 tokens) instead of ending with EOS

Every token is grounded or noise. With grounded words only, r* rises by 1 per word up to 8 at 8 words and
falls by 1 per word beyond (+1 - 2): useful content up to the optimum, verbosity past it. A prompt has 12
words, so the policy can pass the optimum with grounded words alone (12 words score 4, below a typical
chosen response of pi_ref), and a response that never stops needs noise and loses 2 more.

Demonstrations copy the prompt's first n words in order (the detail a response gives is its length), with
n uniform on 1-7 90% of the time and on 9-11 otherwise; occasionally a word absent from the prompt or a
repeat is inserted. pi_ref therefore samples mostly below 8 words, so in its Bradley-Terry pairs the
chosen response is mostly the longer one, and the pairs rarely show what lies past the optimum: the
design lets an offline DAA extrapolate "longer is better" beyond it (R-DPO, length-normalized DPO and a
length-normalized IS ratio are the methods meant for this case).

Measured on pi_ref's D_golden (2026-12-06, the label stage's record; 35,771 pairs): chosen 5.97 words,
rejected 3.56 (gap 2.41); of the pairs of unequal length the chosen is the longer in 83%; 87% of the pairs
have two noise-free finished responses (their labels decided by length alone); 10.4% of the responses are
past 8 words; 0.07 noise words per response. Every DESIGN_CHECK holds. DPO's calibration (beta 0.01, Adam
3e-5 to 1e-3, seed 0) found no decline at any rate (final win rates 0.755-0.849, final KL 1.4-4.4): its
samples at T=0.7 grew from pi_ref's 6.1 words to 8.1-8.2 early in training at every rate (9.0-9.1 at two
checkpoints of the 1e-3 run, where the win rate dipped to 0.59-0.63) and settled at 7.1-7.3, short of the
optimum. Our reading: the two responses of a pair share their prefix and differ at the shorter one's EOS,
so DPO learns where to stop position by position from the data, and its stopping rule stays inside it.

Version 2 (2026-12-06) replaces version 1, whose demonstrations were shuffled subsets (noise words and
repeats 10% each) and whose reward was 0.5 per grounded word, -0.75 per word past 8: there pi_ref's
off-prompt words decided more labels than length did (chosen only 0.27 words longer than rejected in
D_golden) and DPO never passed 8 words. `pair_statistics` measures the property on pi_ref's D_golden
before any training run (`DESIGN_CHECKS`; the label stage records it).
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

    short: tuple[int, int] = (1, 7)  # lengths (prompt words copied in order) of most demonstrations
    long: tuple[int, int] = (9, 11)  # ... and of the others (past the optimum)
    p_long: float = 0.1
    p_noise: float = 0.03  # insert a word absent from the prompt
    p_repeat: float = 0.03  # repeat one listed word


@dataclass(frozen=True)
class LengthReward:
    """The reward's coefficients (the module docstring's formula)."""

    grounded: float = 1.0
    noise: float = 1.0
    over: float = 2.0
    optimum: int = 8
    no_eos: float = 2.0


# What pi_ref's D_golden must show before the task is trained on (fixed before the first measurement;
# `pair_statistics` computes the left-hand sides): chosen responses clearly longer, most labels decided by
# length alone, most samples short of the optimum.
DESIGN_CHECKS = {"length_gap": (">=", 1.0), "length_decided": (">=", 0.5), "longer_chosen": (">=", 0.7),
                 "past_optimum": ("<=", 0.15)}


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
    reward_formula: str = "grounded - noise - 2*max(0,|y|-8) - 2*no_eos"
    model: ModelShape = ModelShape()
    demo: LengthDemoStyle = LengthDemoStyle()
    coef: LengthReward = LengthReward()
    version: int = 2

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
        """The prompt's first n words in order (n short of the optimum 90% of the time), maybe a repeat or a
        word absent from the prompt inserted."""
        style = self.demo
        words = [w for w in prompt.split() if w != self.sep]
        n = rng.randint(*(style.long if rng.random() < style.p_long else style.short))
        out = words[: min(n, len(words))]
        if rng.random() < style.p_repeat:
            out.insert(rng.randint(0, len(out)), rng.choice(out))
        if rng.random() < style.p_noise:
            out.insert(rng.randint(0, len(out)), rng.choice([w for w in self.content if w not in words]))
        return " ".join(out)

    def pair_statistics(self, rows: list[dict]) -> dict:
        """What makes length the route, measured on labelled pairs (prompt, chosen, rejected): the mean
        chosen and rejected length in words and their gap; `longer_chosen`: of the pairs of unequal length, the
        share whose chosen response is the longer; `length_decided`: the share of pairs whose two responses
        are both noise-free and finished, so that their rewards differ by length alone; `past_optimum`: the
        share of responses longer than the optimum; and each DESIGN_CHECKS line with whether it holds."""
        if not rows:
            return {}
        n = len(rows)
        comps = [(self.reward_components(r["prompt"], r["chosen"]), self.reward_components(r["prompt"], r["rejected"]))
                 for r in rows]
        lc = [c["length"] for c, _ in comps]
        lr = [r["length"] for _, r in comps]
        unequal = [(a, b) for a, b in zip(lc, lr) if a != b]
        clean = sum(c["noise"] == 0 and r["noise"] == 0 and not c["no_eos"] and not r["no_eos"] for c, r in comps)
        stats = {"chosen_length": sum(lc) / n, "rejected_length": sum(lr) / n, "length_gap": (sum(lc) - sum(lr)) / n,
                 "longer_chosen": sum(a > b for a, b in unequal) / len(unequal) if unequal else float("nan"),
                 "length_decided": clean / n,
                 "past_optimum": sum((a > self.coef.optimum) + (b > self.coef.optimum)
                                     for a, b in zip(lc, lr)) / (2 * n),
                 "noise_per_response": sum(c["noise"] + r["noise"] for c, r in comps) / (2 * n)}
        stats["design_checks"] = {k: f"{stats[k]:.3f} {op} {v:g}: "
                                     + ("holds" if (stats[k] >= v if op == ">=" else stats[k] <= v) else "FAILS")
                                  for k, (op, v) in DESIGN_CHECKS.items()}
        return stats

    def example_cells(self, prompt: str) -> dict[str, str]:
        return {"optimum": f"{self.coef.optimum} words"}

    def describe(self) -> dict:
        return {"content_words": list(self.content), "separator": self.sep, "demonstrations": asdict(self.demo),
                "reward": asdict(self.coef), "version": self.version}


def golden_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The default length task's r*, as a reward spec (`isdaa.lab.length:golden_reward`)."""
    return LengthTask().golden_reward(prompts, responses)


__all__ = ["DESIGN_CHECKS", "LengthDemoStyle", "LengthReward", "LengthTask", "golden_reward"]
