"""The "key-token summary" task: the lab's first task (`isdaa.lab.task.Task`), and its analytic golden r*.

A prompt is 10 tokens holding 2-4 distinct KEY tokens among FILLER tokens, then the separator `=`:

    prompt    f3 k5 f0 f0 k1 f7 k9 f2 f1 f6 =
    ideal     k5 k1 k9 <eos>

The response should list exactly the prompt's keys (any order) and stop. The golden reward, standing in
for the paper's golden reward model (Section 4.1), scores a response y for a prompt x with K keys:

    r*(x, y) = 3 * coverage - 0.5 * hallucinated - 0.5 * repeated - 0.4 * beyond - 2 * no_eos

    coverage      distinct prompt keys present in y / K                         (in [0, 1])
    hallucinated  tokens of y that are not keys of this prompt (fillers, other keys, and every sampled
                  special token: <pad>, <bos>, <unk>)
    repeated      occurrences of a prompt key after its first
    beyond        max(0, |y| - (K + 2)), |y| = response tokens without EOS, special ones included
    no_eos        1 when y was cut at the length limit instead of ending with EOS

Every response token is exactly one of: a first occurrence of a key (covers), a repeated key, a
hallucination. The ideal response scores 3; the reward is deterministic, so ties are common and the
win rate counts them as 1/2 (METHOD.md). Tokens are read by `task.response_tokens`: the sampled text
holds every sampled token but the terminating EOS, so 16 sampled <pad> without EOS score
-0.5*16 - 0.4*(16 - (K+2)) - 2 (no_eos), not 0.

Demonstrations (the SFT data) are mediocre to good: each key kept with probability 0.75, in prompt
order, sometimes a filler or two, occasionally a hallucinated key or a repetition. pi_ref therefore
makes the penalized mistakes occasionally: out-of-distribution behavior that an offline DAA can
amplify once probability mass leaves the data (repetition is the usual route; LAB-NOTES.md).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from isdaa.lab.task import ModelShape, Task, response_tokens

KEYS = tuple(f"k{i}" for i in range(14))
FILLERS = tuple(f"f{i}" for i in range(8))
SEP = "="


@dataclass(frozen=True)
class DemoStyle:
    """How the SFT demonstrations deviate from the ideal response (probabilities per demonstration
    unless said otherwise)."""

    p_keep_key: float = 0.75  # each prompt key is listed with this probability (at least one is)
    p_filler: float = 0.3  # insert a filler token (twice with p_filler**2)
    p_hallucinate: float = 0.1  # insert a key that is not in the prompt
    p_repeat: float = 0.1  # repeat one listed key
    p_shuffle: float = 0.2  # list the keys in random order instead of prompt order


@dataclass(frozen=True)
class KeyReward:
    """The reward's coefficients (the module docstring's formula)."""

    coverage: float = 3.0
    hallucinated: float = 0.5
    repeated: float = 0.5
    beyond: float = 0.4
    no_eos: float = 2.0
    slack: int = 2  # tokens allowed beyond the number of keys before the length penalty starts


@dataclass(frozen=True)
class KeyTokenTask(Task):
    name: str = "key-token"
    summary: str = ("a prompt of 10 tokens holds 2-4 distinct key tokens among fillers; the response should list "
                    "exactly the keys and end with EOS.")
    keys: tuple[str, ...] = KEYS
    fillers: tuple[str, ...] = FILLERS
    sep: str = SEP
    words: tuple[str, ...] = KEYS + FILLERS + (SEP,)  # + 4 specials = 27 tokens
    prompt_words: int = 11  # 10 content tokens + SEP (+ BOS = 12 ids)
    keys_per_prompt: tuple[int, int] = (2, 4)
    max_response_tokens: int = 16  # EOS included: prompt 12 + response 16 = 28 = max length
    component_names: tuple[str, ...] = ("coverage", "hallucinated", "repeated", "beyond", "no_eos", "length")
    reward_formula: str = "3*coverage - 0.5*hallucinated - 0.5*repeated - 0.4*max(0,|y|-(K+2)) - 2*no_eos"
    model: ModelShape = ModelShape()
    demo: DemoStyle = DemoStyle()
    coef: KeyReward = KeyReward()
    version: int = 2  # 2: sampled special tokens count as hallucinated tokens (1 dropped <pad>)

    # --- the golden reward

    def prompt_keys(self, prompt: str) -> list[str]:
        """The distinct key tokens of a prompt, in order of appearance."""
        keyset, seen = set(self.keys), []
        for tok in prompt.split():
            if tok in keyset and tok not in seen:
                seen.append(tok)
        return seen

    def reward_components(self, prompt: str, response: str) -> dict:
        keys = self.prompt_keys(prompt)
        key_set = set(keys)
        toks, ended = response_tokens(response, self.max_response_tokens)
        covered: set[str] = set()
        hallucinated = repeated = 0
        for tok in toks:
            if tok not in key_set:
                hallucinated += 1
            elif tok in covered:
                repeated += 1
            else:
                covered.add(tok)
        c = self.coef
        coverage = len(covered) / max(len(keys), 1)
        beyond = max(0, len(toks) - (len(keys) + c.slack))
        no_eos = 0 if ended else 1
        reward = (c.coverage * coverage - c.hallucinated * hallucinated - c.repeated * repeated
                  - c.beyond * beyond - c.no_eos * no_eos)
        return {"reward": round(reward, 10),  # exact ties stay ties (e.g. 3*2/3 vs 2.0)
                "coverage": coverage, "n_keys": len(keys), "covered": len(covered), "hallucinated": hallucinated,
                "repeated": repeated, "beyond": beyond, "no_eos": no_eos, "length": len(toks)}

    # --- data

    def sample_prompt(self, rng: random.Random) -> str:
        """10 tokens: 2-4 distinct keys at random positions, fillers elsewhere, then SEP."""
        n_tokens = self.prompt_words - 1
        n_keys = rng.randint(*self.keys_per_prompt)
        keys = rng.sample(self.keys, n_keys)
        positions = set(rng.sample(range(n_tokens), n_keys))
        key_iter = iter(keys)
        toks = [next(key_iter) if i in positions else rng.choice(self.fillers) for i in range(n_tokens)]
        return " ".join(toks + [self.sep])

    def ideal_response(self, prompt: str) -> str:
        return " ".join(self.prompt_keys(prompt))

    def sample_demonstration(self, prompt: str, rng: random.Random) -> str:
        """A mediocre-to-good response: a subset of the keys, maybe fillers, hallucinations, repeats."""
        style = self.demo
        keys = self.prompt_keys(prompt)
        listed = [k for k in keys if rng.random() < style.p_keep_key] or [rng.choice(keys)]
        if rng.random() < style.p_shuffle:
            rng.shuffle(listed)
        out = list(listed)
        if rng.random() < style.p_repeat:
            out.insert(rng.randint(0, len(out)), rng.choice(listed))
        if rng.random() < style.p_hallucinate:
            out.insert(rng.randint(0, len(out)), rng.choice([k for k in self.keys if k not in keys]))
        for _ in range(2):
            if rng.random() < style.p_filler:
                out.insert(rng.randint(0, len(out)), rng.choice(self.fillers))
            else:
                break
        return " ".join(out)

    # --- the report

    def example_cells(self, prompt: str) -> dict[str, str]:
        return {"keys": " ".join(self.prompt_keys(prompt))}

    def describe(self) -> dict:
        return {"keys": list(self.keys), "fillers": list(self.fillers), "separator": self.sep,
                "keys_per_prompt": list(self.keys_per_prompt), "demonstrations": asdict(self.demo),
                "reward": asdict(self.coef), "version": self.version}


def golden_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The default key-token task's r*, as a reward spec (`isdaa.lab.keytoken:golden_reward`)."""
    return KeyTokenTask().golden_reward(prompts, responses)


__all__ = ["DemoStyle", "KeyReward", "KeyTokenTask", "golden_reward"]
