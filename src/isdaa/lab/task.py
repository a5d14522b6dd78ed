"""The lab's synthetic environment: the "key-token summary" task and its analytic golden reward r*.

A prompt is 10 tokens holding 2-4 distinct KEY tokens among FILLER tokens, then the separator `=`:

    prompt    f3 k5 f0 f0 k1 f7 k9 f2 f1 f6 =
    ideal     k5 k1 k9 <eos>

The response should list exactly the prompt's keys (any order) and stop. The golden reward, standing in
for the paper's golden reward model (Section 4.1), scores a response y for a prompt x with K keys:

    r*(x, y) = 3 * coverage - 0.5 * hallucinated - 0.5 * repeated - 0.4 * beyond - 2 * no_eos

    coverage      distinct prompt keys present in y / K                         (in [0, 1])
    hallucinated  tokens of y that are not keys of this prompt (fillers, other keys, sampled specials)
    repeated      occurrences of a prompt key after its first
    beyond        max(0, |y| - (K + 2)), |y| = response tokens without EOS
    no_eos        1 when y was cut at the length limit instead of ending with EOS

Every response token is exactly one of: a first occurrence of a key (covers), a repeated key, a
hallucination. The ideal response scores 3; the reward is deterministic, so ties are common and the
win rate counts them as 1/2 (METHOD.md).

Demonstrations (the SFT data) are mediocre to good: each key kept with probability 0.75, in prompt
order, sometimes a filler or two, occasionally a hallucinated key or a repetition. pi_ref therefore
makes the penalized mistakes occasionally: out-of-distribution behaviour that an offline DAA can
amplify once probability mass leaves the data (repetition is the usual route; LAB-NOTES.md).

The reward scores what was sampled, token by token. The golden reward protocol passes strings: the
sampler's text holds every sampled token, special ones included, except the terminating EOS
(`isdaa.evaluate.sampling.response_text`; sampling cuts at the first EOS, so padding after it never
reaches the reward). A sampled <pad>, <bos> or <unk> is a hallucinated token. A response of
MAX_RESPONSE_TOKENS tokens or more was necessarily cut by the generation limit (the model's tokens are
whole words), so it counts as no EOS; an explicit `<eos>` in the string ends the response there.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

# ---------------------------------------------------------------------------------------------------
# Vocabulary and sizes

N_KEYS_VOCAB = 14  # key tokens k0..k13
N_FILLERS = 8  # filler tokens f0..f7
KEYS = tuple(f"k{i}" for i in range(N_KEYS_VOCAB))
FILLERS = tuple(f"f{i}" for i in range(N_FILLERS))
SEP = "="
WORDS = KEYS + FILLERS + (SEP,)  # plus 4 specials (<pad> <eos> <bos> <unk>) = 27 tokens
PROMPT_TOKENS = 10  # content tokens; the prompt string adds SEP, the tokenizer adds BOS -> 12 ids
MIN_PROMPT_KEYS, MAX_PROMPT_KEYS = 2, 4
MAX_RESPONSE_TOKENS = 16  # generation limit (EOS included): prompt 12 + response 16 = 28 = max length
MAX_LENGTH = PROMPT_TOKENS + 2 + MAX_RESPONSE_TOKENS
SPECIAL_WORDS = {"<pad>", "<eos>", "<bos>", "<unk>"}

_KEY_SET = frozenset(KEYS)

# Reward coefficients (the docstring's formula).
W_COVERAGE, W_HALLUCINATED, W_REPEATED, W_BEYOND, W_NO_EOS = 3.0, 0.5, 0.5, 0.4, 2.0
SLACK = 2  # tokens allowed beyond the number of keys before the length penalty starts


@dataclass(frozen=True)
class DemoStyle:
    """How the SFT demonstrations deviate from the ideal response (probabilities per demonstration
    unless said otherwise)."""

    p_keep_key: float = 0.75  # each prompt key is listed with this probability (at least one is)
    p_filler: float = 0.3  # insert a filler token (twice with p_filler**2)
    p_hallucinate: float = 0.1  # insert a key that is not in the prompt
    p_repeat: float = 0.1  # repeat one listed key
    p_shuffle: float = 0.2  # list the keys in random order instead of prompt order


# ---------------------------------------------------------------------------------------------------
# The golden reward


def _tokens(text: str) -> list[str]:
    return text.split()


def prompt_keys(prompt: str) -> list[str]:
    """The distinct key tokens of a prompt, in order of appearance."""
    seen: list[str] = []
    for tok in _tokens(prompt):
        if tok in _KEY_SET and tok not in seen:
            seen.append(tok)
    return seen


def _response_tokens(response: str) -> tuple[list[str], bool]:
    """(the response's tokens, ended_with_eos). An explicit <eos> ends the response (what follows it, e.g.
    padding, is not part of it); every other token, <pad>, <bos> and <unk> included, is a token the
    policy sampled (hallucinated); MAX_RESPONSE_TOKENS tokens without <eos> were cut at the limit."""
    toks: list[str] = []
    for tok in _tokens(response):
        if tok == "<eos>":
            return toks, True
        toks.append(tok)
    return toks, len(toks) < MAX_RESPONSE_TOKENS


def reward_components(prompt: str, response: str) -> dict:
    """The golden reward and its parts for one (prompt, response): see the module docstring."""
    keys = prompt_keys(prompt)
    key_set = set(keys)
    toks, ended = _response_tokens(response)
    covered: set[str] = set()
    hallucinated = repeated = 0
    for tok in toks:
        if tok not in key_set:
            hallucinated += 1
        elif tok in covered:
            repeated += 1
        else:
            covered.add(tok)
    n_keys = max(len(keys), 1)
    coverage = len(covered) / n_keys
    beyond = max(0, len(toks) - (len(keys) + SLACK))
    no_eos = 0 if ended else 1
    reward = (
        W_COVERAGE * coverage
        - W_HALLUCINATED * hallucinated
        - W_REPEATED * repeated
        - W_BEYOND * beyond
        - W_NO_EOS * no_eos
    )
    return {
        "reward": round(reward, 10),  # exact ties stay ties (e.g. 3*2/3 vs 2.0)
        "coverage": coverage,
        "n_keys": len(keys),
        "covered": len(covered),
        "hallucinated": hallucinated,
        "repeated": repeated,
        "beyond": beyond,
        "no_eos": no_eos,
        "length": len(toks),
    }


def golden_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The golden reward protocol: r*(x, y) for each (prompt, response) pair."""
    if len(prompts) != len(responses):
        raise ValueError(f"golden_reward: {len(prompts)} prompts but {len(responses)} responses")
    return [reward_components(p, r)["reward"] for p, r in zip(prompts, responses)]


COMPONENT_NAMES = ("coverage", "hallucinated", "repeated", "beyond", "no_eos", "length")


def mean_components(prompts: list[str], responses: list[str]) -> dict[str, float]:
    """Means of the reward components over samples (the report's 'how it over-optimizes')."""
    comps = [reward_components(p, r) for p, r in zip(prompts, responses)]
    n = max(len(comps), 1)
    return {k: sum(c[k] for c in comps) / n for k in ("reward",) + COMPONENT_NAMES}


# ---------------------------------------------------------------------------------------------------
# Data generation (explicit seeds; nothing random at import)


def sample_prompt(rng: random.Random) -> str:
    """10 tokens: 2-4 distinct keys at random positions, fillers elsewhere, then SEP."""
    n_keys = rng.randint(MIN_PROMPT_KEYS, MAX_PROMPT_KEYS)
    keys = rng.sample(KEYS, n_keys)
    positions = set(rng.sample(range(PROMPT_TOKENS), n_keys))
    key_iter = iter(keys)
    toks = [next(key_iter) if i in positions else rng.choice(FILLERS) for i in range(PROMPT_TOKENS)]
    return " ".join(toks + [SEP])


def ideal_response(prompt: str) -> str:
    return " ".join(prompt_keys(prompt))


def sample_demonstration(prompt: str, rng: random.Random, style: DemoStyle = DemoStyle()) -> str:
    """A mediocre-to-good response: a subset of the keys, maybe fillers, hallucinations, repeats."""
    keys = prompt_keys(prompt)
    listed = [k for k in keys if rng.random() < style.p_keep_key] or [rng.choice(keys)]
    if rng.random() < style.p_shuffle:
        rng.shuffle(listed)
    out = list(listed)
    if rng.random() < style.p_repeat:
        out.insert(rng.randint(0, len(out)), rng.choice(listed))
    if rng.random() < style.p_hallucinate:
        out.insert(rng.randint(0, len(out)), rng.choice([k for k in KEYS if k not in keys]))
    for _ in range(2):
        if rng.random() < style.p_filler:
            out.insert(rng.randint(0, len(out)), rng.choice(FILLERS))
        else:
            break
    return " ".join(out)


def make_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [sample_prompt(rng) for _ in range(n)]


def make_sft_rows(n: int, seed: int, style: DemoStyle = DemoStyle()) -> list[dict]:
    """SFT data in the engine's prompt/completion format."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = sample_prompt(rng)
        rows.append({"prompt": prompt, "completion": sample_demonstration(prompt, rng, style)})
    return rows


# ---------------------------------------------------------------------------------------------------
# Tokenizer and model (real Hugging Face objects)


@dataclass(frozen=True)
class ModelShape:
    """The tiny Llama of the lab (about 160k parameters)."""

    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 192  # SwiGLU: 3 matrices, ~ the parameters of a 4x GELU MLP
    max_position_embeddings: int = 32  # >= MAX_LENGTH


def build_tokenizer():
    """The word-level tokenizer over the task's fixed vocabulary; BOS prepended like Llama's."""
    from isdaa.tiny import build_word_tokenizer

    return build_word_tokenizer(words=list(WORDS), add_bos=True)


def build_model(tokenizer, shape: ModelShape = ModelShape(), seed: int = 0):
    from isdaa.tiny import build_tiny_llama

    return build_tiny_llama(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        seed=seed,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def save_initial_model(out_dir: str | Path, shape: ModelShape = ModelShape(), seed: int = 0) -> Path:
    """Random-init model + tokenizer saved with save_pretrained: the SFT stage's starting point."""
    from isdaa.tiny import save_tiny

    tok = build_tokenizer()
    return save_tiny(build_model(tok, shape, seed), tok, out_dir)


# ---------------------------------------------------------------------------------------------------
# Documentation for the report


def definition(style: DemoStyle = DemoStyle(), shape: ModelShape = ModelShape()) -> dict:
    """Everything that defines the environment, as JSON (written next to the report)."""
    return {
        "task": "key-token summary",
        "reward_version": 2,  # 2: a sampled <pad> is a hallucinated token (1 dropped it)
        "vocabulary": {"keys": list(KEYS), "fillers": list(FILLERS), "separator": SEP,
                       "specials": sorted(SPECIAL_WORDS)},
        "prompt_tokens": PROMPT_TOKENS,
        "keys_per_prompt": [MIN_PROMPT_KEYS, MAX_PROMPT_KEYS],
        "max_response_tokens": MAX_RESPONSE_TOKENS,
        "max_length": MAX_LENGTH,
        "reward": {"coverage": W_COVERAGE, "hallucinated": -W_HALLUCINATED, "repeated": -W_REPEATED,
                   "beyond_keys_plus_2": -W_BEYOND, "no_eos": -W_NO_EOS},
        "reward_formula": "3*coverage - 0.5*hallucinated - 0.5*repeated - 0.4*max(0,|y|-(K+2)) - 2*no_eos",
        "demonstrations": asdict(style),
        "model": asdict(shape),
    }


def expected_demo_reward(n: int = 2000, seed: int = 0) -> float:
    """Mean golden reward of the demonstrations (a sanity number for the report)."""
    rows = make_sft_rows(n, seed)
    rewards = golden_reward([r["prompt"] for r in rows], [r["completion"] for r in rows])
    return math.fsum(rewards) / len(rewards)
