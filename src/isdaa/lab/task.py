"""The lab's task interface: what a synthetic environment of the controlled study must provide.

A task is data (a frozen dataclass subclassing `Task`): its `definition()` is hashed into the cache keys
of every stage and written to lab.json, and it is pickled to the sweep's worker processes. It provides

    name, words              its short name and vocabulary (the word tokenizer adds <pad> <eos> <bos> <unk>)
    summary                  one sentence for the report (optional)
    prompt_words             words per prompt string (fixed: prompts need no left padding)
    max_response_tokens      the generation limit, EOS included
    component_names          the golden reward's parts the report tabulates and plots
    reward_formula           r*(x, y) in one line, for the report
    model                    the shape of pi_ref (`ModelShape`)
    sample_prompt(rng), sample_demonstration(prompt, rng)   the prompt and SFT data generators
    reward_components(prompt, response) -> {"reward": r*, **components}
    example_cells(prompt) -> {column: text}                  the report's example table (optional)
    pair_statistics(rows) -> dict                            statistics of pi_ref's labelled pairs (optional)

and gets the rest from `Task`: `golden_reward(prompts, responses) -> list[float]` (the golden reward
protocol of `isdaa.evaluate`), data sets, the tokenizer and the random-init model. Built-in tasks:
`key-token` (`isdaa.lab.keytoken`) and `length` (`isdaa.lab.length`); `isdaa lab --task module:Name`
loads a user's own (`load_task`), checked by `check_task` before any stage runs.

Responses reach a golden reward as text that holds every sampled token, special ones included, except the
terminating EOS (`isdaa.evaluate.sampling.response_text`; sampling cuts at the first EOS, so padding after
it never reaches the reward). `response_tokens` reads that text back token by token.
"""

from __future__ import annotations

import abc
import importlib
import math
import os
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # the word tokenizer's special tokens (isdaa.tiny)
EOS = "<eos>"


@dataclass(frozen=True)
class ModelShape:
    """The tiny Llama of pi_ref (about 160k parameters at the defaults)."""

    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 192  # SwiGLU: 3 matrices, ~ the parameters of a 4x GELU MLP
    max_position_embeddings: int = 32  # >= the task's max_length


def response_tokens(response: str, limit: int) -> tuple[list[str], bool]:
    """(the response's tokens, ended with EOS) from its sampled text. An explicit `<eos>` ends the
    response (what follows, e.g. padding, is not part of it); every other token, `<pad>`, `<bos>` and
    `<unk>` included, is a token the policy sampled; a response of `limit` tokens or more without
    `<eos>` was cut at the generation limit (the text of a finished response drops its EOS, so it holds
    at most limit - 1 tokens)."""
    toks: list[str] = []
    for tok in response.split():
        if tok == EOS:
            return toks, True
        toks.append(tok)
    return toks, len(toks) < limit


class Task(abc.ABC):
    """The interface (module docstring). Subclasses are frozen dataclasses whose fields include the
    attributes below."""

    name: str
    summary: str = ""
    words: tuple[str, ...]
    prompt_words: int
    max_response_tokens: int
    component_names: tuple[str, ...]
    reward_formula: str
    model: ModelShape

    # --- what a task implements

    @abc.abstractmethod
    def sample_prompt(self, rng: random.Random) -> str:
        """One prompt: `prompt_words` words of the vocabulary, separated by spaces."""

    @abc.abstractmethod
    def sample_demonstration(self, prompt: str, rng: random.Random) -> str:
        """One SFT demonstration for `prompt` (the response, without EOS)."""

    @abc.abstractmethod
    def reward_components(self, prompt: str, response: str) -> dict:
        """{"reward": r*(x, y), **parts}: the golden reward of one response and its parts (at least
        `component_names`)."""

    def example_cells(self, prompt: str) -> dict[str, str]:
        """Extra columns of the report's example table for one prompt (e.g. the keys it holds)."""
        return {}

    def pair_statistics(self, rows: list[dict]) -> dict:
        """Task-specific statistics of labelled pairs (rows with prompt, chosen, rejected: pi_ref's D_golden),
        recorded by the label stage before any training run and shown in the report ({} by default)."""
        return {}

    def describe(self) -> dict:
        """The task's own settings for `definition()` (demonstration style, reward coefficients, ...)."""
        return {}

    # --- provided

    @property
    def max_prompt_length(self) -> int:
        """Prompt ids: BOS + the prompt's words."""
        return self.prompt_words + 1

    @property
    def max_length(self) -> int:
        return self.max_prompt_length + self.max_response_tokens

    def golden_reward(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The golden reward protocol: r*(x, y) for each (prompt, response) pair."""
        if len(prompts) != len(responses):
            raise ValueError(f"golden_reward: {len(prompts)} prompts but {len(responses)} responses")
        return [float(self.reward_components(p, r)["reward"]) for p, r in zip(prompts, responses)]

    def mean_components(self, prompts: list[str], responses: list[str]) -> dict[str, float]:
        """Means of the reward and its components over samples (the report's 'how it over-optimizes')."""
        comps = [self.reward_components(p, r) for p, r in zip(prompts, responses)]
        n = max(len(comps), 1)
        return {k: sum(float(c[k]) for c in comps) / n for k in ("reward",) + tuple(self.component_names)}

    def make_prompts(self, n: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        return [self.sample_prompt(rng) for _ in range(n)]

    def make_sft_rows(self, n: int, seed: int) -> list[dict]:
        """SFT data in the engine's prompt/completion format."""
        rng = random.Random(seed)
        rows = []
        for _ in range(n):
            prompt = self.sample_prompt(rng)
            rows.append({"prompt": prompt, "completion": self.sample_demonstration(prompt, rng)})
        return rows

    def expected_demo_reward(self, n: int = 2000, seed: int = 0) -> float:
        """Mean golden reward of the demonstrations (a sanity number)."""
        rows = self.make_sft_rows(n, seed)
        rewards = self.golden_reward([r["prompt"] for r in rows], [r["completion"] for r in rows])
        return math.fsum(rewards) / len(rewards)

    def build_tokenizer(self):
        """The word-level tokenizer over the task's vocabulary; BOS prepended like Llama's."""
        from isdaa.tiny import build_word_tokenizer

        return build_word_tokenizer(words=list(self.words), add_bos=True)

    def build_model(self, tokenizer, seed: int = 0):
        from isdaa.tiny import build_tiny_llama

        s = self.model
        return build_tiny_llama(
            vocab_size=len(tokenizer), hidden_size=s.hidden_size, num_layers=s.num_layers, num_heads=s.num_heads,
            intermediate_size=s.intermediate_size, max_position_embeddings=s.max_position_embeddings, seed=seed,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
        )

    def save_initial_model(self, out_dir: str | Path, seed: int = 0) -> Path:
        """Random-init model + tokenizer saved with save_pretrained: the SFT stage's starting point."""
        from isdaa.tiny import save_tiny

        tok = self.build_tokenizer()
        return save_tiny(self.build_model(tok, seed), tok, out_dir)

    def definition(self) -> dict:
        """Everything that defines the environment, as JSON (lab.json, task/definition.json, cache keys)."""
        return {"task": self.name, "class": task_ref(self), "vocabulary": list(self.words),
                "specials": list(SPECIALS), "prompt_words": self.prompt_words,
                "max_response_tokens": self.max_response_tokens, "max_length": self.max_length,
                "reward_formula": self.reward_formula, "components": list(self.component_names),
                "model": asdict(self.model), **self.describe()}


def task_ref(task) -> str:
    """`module:Class` of a task (lab.json; `load_task` reads it back)."""
    return f"{type(task).__module__}:{type(task).__qualname__}"


BUILTIN = {"key-token": "isdaa.lab.keytoken:KeyTokenTask", "length": "isdaa.lab.length:LengthTask"}


def load_task(spec) -> Task:
    """A task from a built-in name (`key-token`, `length`), `module:Name` (a Task subclass, instantiated
    without arguments, or an instance), or a Task itself; checked by `check_task`. The working directory
    is on the import path, as `python -m` would have it."""
    if isinstance(spec, Task):
        return check_task(spec)
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"task: expected a built-in name ({', '.join(BUILTIN)}) or module:Name, got {spec!r}")
    ref = BUILTIN.get(spec, spec)
    module, sep, name = ref.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"task {spec!r}: expected a built-in name ({', '.join(BUILTIN)}) or module:Name")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise ValueError(f"task {spec!r}: cannot import module {module!r} ({err})") from None
    except AttributeError:
        raise ValueError(f"task {spec!r}: module {module!r} has no {name!r}") from None
    if isinstance(obj, type) and issubclass(obj, Task):
        obj = obj()
    if not isinstance(obj, Task):
        raise TypeError(f"task {spec!r} is a {type(obj).__name__}, not a subclass or instance of "
                        "isdaa.lab.task.Task")
    return check_task(obj)


def check_task(task: Task, n: int = 64) -> Task:
    """Loud on a task the lab cannot run: its attributes, and `n` seeded prompts, demonstrations and
    rewards (each prompt `prompt_words` words of the vocabulary, each demonstration at most
    max_response_tokens - 1 words of it, every reward part a finite number). Returns the task."""
    where = f"task {getattr(task, 'name', type(task).__name__)!r} ({task_ref(task)})"
    for attr in ("name", "words", "prompt_words", "max_response_tokens", "component_names", "reward_formula",
                 "model"):
        if not hasattr(task, attr):
            raise TypeError(f"{where}: no attribute {attr!r}")
    words = list(task.words)
    bad = [w for w in words if not isinstance(w, str) or not w or w != w.strip() or len(w.split()) != 1
           or w in SPECIALS]
    if bad or len(set(words)) != len(words) or not words:
        raise ValueError(f"{where}: `words` must be distinct single words, none of {', '.join(SPECIALS)}"
                         + (f"; bad: {bad[:5]}" if bad else "; duplicates or empty"))
    if int(task.prompt_words) < 1 or int(task.max_response_tokens) < 2:
        raise ValueError(f"{where}: prompt_words must be >= 1 and max_response_tokens >= 2")
    if task.model.max_position_embeddings < task.max_length:
        raise ValueError(f"{where}: model.max_position_embeddings {task.model.max_position_embeddings} < "
                         f"max_length {task.max_length} (prompt + response ids)")
    vocab = set(words)
    rng = random.Random(0)
    for i in range(n):
        prompt = task.sample_prompt(rng)
        toks = prompt.split()
        if len(toks) != task.prompt_words or not set(toks) <= vocab:
            raise ValueError(f"{where}: sample_prompt #{i} {prompt!r} must be {task.prompt_words} words of "
                             f"the vocabulary (unknown: {sorted(set(toks) - vocab)[:5]})")
        demo = task.sample_demonstration(prompt, rng)
        dtoks = demo.split()
        if len(dtoks) >= task.max_response_tokens or not set(dtoks) <= vocab:
            raise ValueError(f"{where}: sample_demonstration #{i} {demo!r} must be < {task.max_response_tokens} "
                             f"words of the vocabulary (unknown: {sorted(set(dtoks) - vocab)[:5]})")
        comps = task.reward_components(prompt, demo)
        for key in ("reward", *task.component_names):
            v = comps.get(key) if isinstance(comps, dict) else None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{where}: reward_components({prompt!r}, {demo!r}) field {key!r} must be a "
                                 f"finite number, got {v!r}")
    return task
