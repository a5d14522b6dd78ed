"""The loop's only uses of accelerate's private API, in one place (one file to fix when accelerate moves them).

- `set_sync_gradients`: the loop does its own micro-batching (no prepared dataloader), so it tells
  accelerate which micro-batch ends the optimizer step (DDP gradient sync, DeepSpeed step boundary);
  `Accelerator.accumulate` would need accelerate's dataloader to know the last step.
- `reset_state`: accelerate keeps process-wide singletons; `train()` runs several times in one process
  (tests, the lab) with different accumulation / precision. The distributed PartialState is kept.
"""

from __future__ import annotations


def set_sync_gradients(accelerator, sync: bool) -> None:
    """Whether this micro-batch's backward synchronises gradients (the last one of the step)."""
    accelerator.gradient_state._set_sync_gradients(sync)


def reset_state() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
