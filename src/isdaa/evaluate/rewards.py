"""Golden reward protocol (ARCHITECTURE.md): `reward(prompts, responses) -> list[float]`.

Either a Python callable named `module:function` (the lab's analytic reward) or a sequence-
classification reward model with one label (`RewardModel(path)`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RewardFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


class RewardModel:
    """A `AutoModelForSequenceClassification` with one label, scoring `prompt + separator + response`.

    The text is tokenized with the tokenizer's special tokens; right padding; the score is logit 0.
    """

    def __init__(self, path: str | Path, batch_size: int = 32, separator: str = " ",
                 max_length: int | None = None, device: str | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from isdaa.train.models import safe_from_pretrained

        self.path = str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = safe_from_pretrained(AutoModelForSequenceClassification, self.path).eval()
        if device:
            self.model.to(device)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.batch_size, self.separator, self.max_length = batch_size, separator, max_length

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        device = next(self.model.parameters()).device
        texts = [p + self.separator + r for p, r in zip(prompts, responses)]
        scores: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i: i + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=self.max_length is not None, max_length=self.max_length)
            logits = self.model(**{k: v.to(device) for k, v in enc.items()}).logits  # (B, 1)
            scores.extend(logits[:, 0].float().cpu().tolist())
        return scores

    def __repr__(self) -> str:
        return f"RewardModel({self.path!r})"


def load_reward(spec: str | RewardFn) -> RewardFn:
    """`module:function` -> that callable; a directory -> `RewardModel(dir)`; a callable -> itself.
    `check_reward` first: a clear error for a spec that cannot work."""
    if callable(spec):
        return spec
    checked = check_reward(spec)
    return checked if callable(checked) else RewardModel(checked)


def check_reward(spec: str | RewardFn, what: str = "golden reward"):
    """Import and check a reward spec without loading a model: `module:function` -> the callable (it
    must take (prompts, responses)); a reward-model directory -> its path, once its config says one
    label. Raises ImportError / ValueError naming the spec (training calls it before step 1)."""
    if callable(spec):
        return spec
    if ":" in spec and not Path(spec).exists():
        return import_callable(spec, what, params=("prompts", "responses"))
    if Path(spec).is_dir():
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(spec)
        except (OSError, ValueError) as err:
            raise ValueError(f"{what} {spec!r}: not a reward-model folder ({err})") from None
        if getattr(config, "num_labels", None) != 1:
            raise ValueError(f"{what} {spec!r}: a reward model has one label (a sequence classifier with "
                             f"num_labels=1), this one has {getattr(config, 'num_labels', None)}")
        return spec
    raise ValueError(f"{what} {spec!r}: expected `module:function` or a reward-model directory")


def import_callable(spec: str, what: str, params: tuple = ()):
    """`module:function` imported with the working directory first on sys.path, as `python -m` has it
    (the `isdaa` script alone would not find a module next to the config). `params`: the positional
    arguments it must take. Raises ImportError (the module) or ValueError (the function) naming `spec`."""
    import inspect
    import os
    import sys

    module, _, name = spec.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ImportError(f"{what} {spec!r}: cannot import {module!r} ({err}; searched the working directory "
                          f"{cwd} and sys.path)") from None
    except Exception as err:  # the module itself failed while importing
        raise ImportError(f"{what} {spec!r}: importing {module!r} failed: {type(err).__name__}: {err}") from err
    fn = getattr(mod, name, None)
    if fn is None or not callable(fn):
        raise ValueError(f"{what} {spec!r}: {module!r} has no callable {name!r}"
                         + (f" (it is a {type(fn).__name__})" if fn is not None else ""))
    if params:
        try:
            inspect.signature(fn).bind(*[[] for _ in params])
        except TypeError as err:
            raise ValueError(f"{what} {spec!r} must take ({', '.join(params)}): {err}") from None
        except ValueError:  # no signature (some builtins): checked when called
            pass
    return fn


def reward_name(spec) -> str:
    """A printable name for a reward spec (recorded in outputs)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, RewardModel):
        return spec.path
    return f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', type(spec).__name__)}"


def score(reward: RewardFn, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Call the reward and check it returned one finite float per response."""
    out = [float(x) for x in reward(list(prompts), list(responses))]
    if len(out) != len(responses):
        raise ValueError(f"golden reward returned {len(out)} scores for {len(responses)} responses")
    return out
