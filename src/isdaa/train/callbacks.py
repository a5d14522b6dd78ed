"""Training callbacks: called on every process before the first step, after each optimizer step and at
the end.

    class MyCallback(TrainerCallback):
        def on_step_end(self, ctx):
            if ctx.step % 50 == 0:
                ctx.log({"eval/win_rate": evaluate(ctx.model, ctx.tokenizer)})
            if something_wrong:
                ctx.request_stop("diverged")

`ctx.metrics` converts this step's metric tensors to floats on first access (a host sync only when a
callback reads them); at logging steps they are already floats. `ctx.log(d)` adds `d` to this step's
record in metrics.jsonl (a record is written for the step even off the logging schedule). A stop
request ends the run cleanly: final checkpoint, summary.json with status "stopped" and the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class TrainerCallback:
    def on_train_begin(self, ctx: TrainContext) -> None:
        """Before the first step (after models, tokenizer and data are loaded): load what the callback
        needs, so that a bad setting fails before any training."""

    def on_step_end(self, ctx: TrainContext) -> None:
        pass

    def on_train_end(self, ctx: TrainContext) -> None:
        pass


@dataclass
class TrainContext:
    step: int                          # optimizer steps done
    examples_seen: int                 # global examples (pairs for pref/rm) consumed
    total_steps: int
    epoch: float
    model: Any                         # unwrapped model (peft model when LoRA)
    tokenizer: Any
    cfg: Any
    output_dir: str
    is_main_process: bool = True
    accelerator: Any = None
    summary: dict | None = None        # set for on_train_end
    _metrics_fn: Callable[[], dict] | None = None
    _metrics: dict | None = None
    logged: dict = field(default_factory=dict)
    stop_reason: str | None = None

    @property
    def metrics(self) -> dict:
        if self._metrics is None:
            self._metrics = self._metrics_fn() if self._metrics_fn else {}
        return self._metrics

    def log(self, values: dict) -> None:
        self.logged.update(values)

    def request_stop(self, reason: str = "requested by a callback") -> None:
        self.stop_reason = str(reason)


class StopAtStep(TrainerCallback):
    """Request a stop once `step` optimizer steps are done (tests, budgeted runs)."""

    def __init__(self, step: int, reason: str = "stop_at_step"):
        self.step, self.reason = step, reason

    def on_step_end(self, ctx):
        if ctx.step >= self.step:
            ctx.request_stop(self.reason)
