"""The loop's only uses of accelerate's private API, in one place (one file to fix when accelerate moves them).

- `native_forward`: a prepared model's forward without accelerate's autocast wrapper (`_original_forward`).

- `set_sync_gradients`: the loop does its own micro-batching (no prepared dataloader), so it tells
  accelerate which micro-batch ends the optimizer step (DDP gradient sync, DeepSpeed step boundary);
  `Accelerator.accumulate` would need accelerate's dataloader to know the last step.
- `reset_state`: accelerate keeps process-wide singletons; `train()` runs several times in one process
  (tests, the lab) with different accumulation / precision. The distributed PartialState is kept.
- `zero3_init_off`: the active DeepSpeed plugin's `zero3_init_context_manager(enable=False)` (accelerate's
  documented way to load a model that ZeRO-3 must not partition), found through the process-wide state.
- `fsdp_on_cpu`: a CPU launch (gloo) of an FSDP config. accelerate (1.16) picks MULTI_CPU there and
  drops the FSDP plugin without a word: the run would train as DDP (a full model per process). Its FSDP2
  code (`fully_shard`, full state dicts, `save_state`) runs on CPU with gloo, so the loop switches the
  state to FSDP with the launch's plugin, as accelerate itself does for GPUs. FSDP1 on CPU is refused
  by accelerate / torch (`sync_module_states` "is not supported on cpu"; otherwise "Inconsistent compute
  device and `device_id` ... cpu vs cpu:0"): `check_fsdp_launch` says so before anything starts.
"""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def native_forward(model):
    """`model` (a prepared, unwrapped model) forwards WITHOUT the autocast wrapper accelerate's `prepare` put
    on it under mixed precision (it keeps the original as `_original_forward`): for scoring that must match a
    frozen model scored in the weights' own precision (the live evaluator's KL against its reference)."""
    original = model.__dict__.get("_original_forward")
    if original is None:
        yield model
        return
    patched = model.__dict__.get("forward")
    model.forward = original
    try:
        yield model
    finally:
        if patched is None:
            del model.forward
        else:
            model.forward = patched


def set_sync_gradients(accelerator, sync: bool) -> None:
    """Whether this micro-batch's backward synchronises gradients (the last one of the step)."""
    accelerator.gradient_state._set_sync_gradients(sync)


def reset_state() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    if _switched:  # the next run decides again (fsdp_on_cpu)
        PartialState._shared_state["distributed_type"] = _switched.pop()


def _fsdp_launch() -> bool:
    """Whether the launch asked for FSDP (`accelerate launch` with an FSDP config sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def check_fsdp_launch(cpu: bool) -> None:
    """Before the Accelerator is built: FSDP1 cannot run on a CPU launch; say what can."""
    if cpu and _fsdp_launch() and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ValueError("FSDP on CPU (gloo) runs with fsdp_version: 2 only: accelerate/torch refuse FSDP1 there "
                         "(sync_module_states / device_id on cpu). Use configs/accelerate/fsdp.yaml (FSDP2), or "
                         "launch without an FSDP config for DDP.")


def fsdp_on_cpu(accelerator) -> bool:
    """A CPU launch of an FSDP config: switch accelerate's state from MULTI_CPU (DDP) to FSDP2 with the
    plugin the launch describes (what `AcceleratorState` does for GPUs). Returns whether it switched."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if not _fsdp_launch() or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* environment the launcher set
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    # accelerate re-reads the type from PartialState whenever an AcceleratorState() is built (in prepare)
    _switched.append(PartialState._shared_state["distributed_type"])
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


_switched: list = []  # the PartialState type fsdp_on_cpu replaced, restored by reset_state


def zero3_init_off():
    """A context in which `from_pretrained` builds a whole model, not a ZeRO-3-partitioned one (`zero.Init`
    follows the active DeepSpeed plugin's `zero3_init_flag`); a no-op without DeepSpeed."""
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:  # no Accelerator in this process
        return contextlib.nullcontext()
    plugin = AcceleratorState().deepspeed_plugin
    return contextlib.nullcontext() if plugin is None else plugin.zero3_init_context_manager(enable=False)
