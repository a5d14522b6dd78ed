"""`data:`: the training / evaluation datasets and the token lengths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from isdaa.config.checks import _check, _check_choices, one_of


@dataclass
class DataConfig:
    train: Any = ""                    # hub name, local .jsonl / .json / .parquet file, glob, or a list (mixture)
    train_split: str = "train"         # split of a hub dataset
    eval: str | None = None         # same forms; for a hub dataset usually the same name
    eval_split: str = "test"           # split of the hub eval dataset
    subset: str | None = None       # hub dataset configuration name
    max_length: int = 640              # prompt + response tokens (ARCHITECTURE.md, tokenization rule)
    max_prompt_length: int = 512       # the prompt keeps its LAST max_prompt_length tokens
    max_train_examples: int | None = None  # keep the first N rows (None: all)
    max_eval_examples: int | None = None   # keep the first N eval rows (None: all)
    sft_source: str = one_of("auto", "completion", "messages", "chosen")  # sft only: auto | completion |
                                       # messages | chosen
    drop_unfinished: bool = True       # pref: drop pairs flagged `chosen_finished`/`rejected_finished` false
                                       # (samples cut at max_new_tokens); false keeps them, without EOS
    streaming: bool = False            # hub datasets: read rows lazily (with max_*_examples: only those rows)
    num_proc: int | None = None        # processes for datasets.load_dataset (hub download / preparation)

    def __post_init__(self):
        _check(bool(self.train), "data.train is required (hub name or local file)")
        _check(self.max_length > 0 and self.max_prompt_length > 0, "data.max_length and max_prompt_length must be > 0")
        _check(self.max_prompt_length < self.max_length, "data.max_prompt_length must be < data.max_length")
        for name in ("max_train_examples", "max_eval_examples"):
            v = getattr(self, name)
            _check(v is None or v > 0, f"data.{name} must be > 0")
        _check_choices(self, "data.")
        _check(self.num_proc is None or self.num_proc > 0, "data.num_proc must be > 0")
        from isdaa.data.files import one_split

        _check(not (self.eval == self.train and self.eval_split != self.train_split and one_split(self.train)),
               f"data.eval is the training file {self.train}: a local file has one split, so eval_split "
               f"{self.eval_split!r} would read the training rows; to evaluate on them set data.eval_split: "
               f"{self.train_split} (TRL: dataset_test_split; said at the start), or give an evaluation file "
               "(data.eval, or a dataset folder with train and test files)")
