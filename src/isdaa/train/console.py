"""What a training run prints, as a TRL run prints it: one progress bar at a time (no nested bars, so no
cursor-up escapes in a log file), a dict per logging step above it (`{'loss': '0.6931', 'grad_norm': ...,
'learning_rate': ..., 'rewards/chosen': ..., 'epoch': '0.25'}`, the entries trainer_state.json's log_history
gets, floats to 4 significant digits as transformers prints them), the evaluation's dict on its own line,
and the closing dict (train_runtime, train_samples_per_second, train_loss, ...). isdaa's own metrics come
along; the importance-weight ones (`is/*`) only for a method that has importance weights (plain DPO's
would read w=1, ess=1). Warnings raised by isdaa are shown as coming from the user's config, one line
each, not as isdaa's source line.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import isdaa

HIDDEN = ("elapsed_s", "examples", "step")  # in metrics.jsonl; the bar counts steps (TRL's dict has no step)
FIRST = ("loss", "eval_loss", "grad_norm", "learning_rate")  # transformers' order, then the rest, the epoch
POSTFIX = {"loss": "loss", "rewards/accuracies": "acc", "rewards/margins": "margin", "is/weight_mean": "w",
           "is/ess": "ess", "accuracy": "acc"}


class NoBar:
    """A stand-in for the progress bar where none is shown (a failed step's record)."""

    disable = True

    def set_postfix(self, *args, **kwargs):
        pass


def progress(cfg, total: int, initial: int, accelerator):
    """The run's one tqdm bar (main process, `progress: true`)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not (cfg.progress and accelerator.is_main_process),
                desc=f"{cfg.kind}", dynamic_ncols=True)


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def _shown(cfg, key: str, value=None) -> bool:
    if key in HIDDEN or (key.endswith("nonfinite_steps") and not value):  # skipped steps: said when there are
        return False
    if key.startswith(("is/", "eval_is/")):
        from isdaa.losses import METHODS

        method = METHODS.get(getattr(cfg, "method", None))
        return method is not None and method.importance_weighted
    return True


def log_lines(record: dict, cfg) -> list[str]:
    """The console lines of one metrics.jsonl record: its log_history entries, as transformers prints them."""
    from isdaa.train.trainer_state import log_entries

    lines = []
    for entry in log_entries(record):
        keys = [k for k in FIRST if k in entry] + sorted(k for k in entry if k not in FIRST and k != "epoch")
        lines.append(str({k: _fmt(entry[k]) for k in [*keys, "epoch"] if k in entry and _shown(cfg, k, entry[k])}))
    return lines


def postfix(record: dict, cfg) -> dict:
    """The bar's short postfix: the loss, the pair accuracy and margin (and the IS weight for IS methods)."""
    out = {short: f"{record[k]:.3g}" for k, short in POSTFIX.items() if k in record and _shown(cfg, k)}
    if "tokens_per_s" in record:
        out["tok/s"] = f"{record['tokens_per_s']:.0f}"
    return out


def write(bar, line: str) -> None:
    """A line above the progress bar (tqdm.write keeps the bar whole), or a plain print without one."""
    from tqdm.auto import tqdm

    if getattr(bar, "disable", True):
        print(line, flush=True)
    else:
        tqdm.write(line)


@contextlib.contextmanager
def user_warnings(origin: str | None):
    """Within it, a warning that isdaa raises is one line headed by `origin` (the user's config file or
    the command line): `dpo.yaml: warning: warmup (100 steps) >= the run's 6 steps ...`, instead of isdaa's
    file and source line. Warnings from other libraries keep their usual form."""
    package = str(Path(isdaa.__file__).parent)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(package):
            import sys

            text = str(message)
            head = origin or "isdaa"
            text = text[len(head) + 2:] if text.startswith(f"{head}: ") else text  # already said where
            print(f"{head}: warning: {text}", file=file or sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown
