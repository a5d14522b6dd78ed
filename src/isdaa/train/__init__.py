"""Training engine: `train(cfg, callbacks=(), batch_source=None, resume=False, overwrite=False)`.

The config's type picks the task: SFTConfig -> sft.py, RMConfig -> rm.py, PrefConfig -> pref.py;
loop.py runs them all. `batch_source(step, model, tokenizer)` (preference training only) replaces
the dataset (`data.streaming` makes one: isdaa.data.stream): it returns this process's pairs for optimizer step
`step` (0-based), either as rows
(`prompt` / `chosen` / `rejected`, optional `ref_*` / behavior logps columns; rows without reference
log-probs are scored by the reference model on the fly) or as one collated batch
(`isdaa.data.collate_pref`'s keys). With a batch_source, `max_steps` must be set.
"""

from __future__ import annotations


def train(cfg, callbacks=(), batch_source=None, resume: bool = False, overwrite: bool = False) -> dict:
    from isdaa.config import PrefConfig, RMConfig, SFTConfig
    from isdaa.train.loop import run

    if isinstance(cfg, PrefConfig):
        from isdaa.train.drift_stop import drift_callbacks
        from isdaa.train.pref import PrefTask as task_cls

        callbacks = (*callbacks, *drift_callbacks(cfg))  # stop_on_drift, when configured
    elif isinstance(cfg, RMConfig):
        from isdaa.train.rm import RMTask as task_cls
    elif isinstance(cfg, SFTConfig):
        from isdaa.train.sft import SFTTask as task_cls
    else:
        raise TypeError(f"train() takes an SFTConfig, RMConfig or PrefConfig, got {type(cfg).__name__}")
    if batch_source is not None and not isinstance(cfg, PrefConfig):
        raise ValueError("batch_source is for preference training only")
    if batch_source is None and isinstance(cfg, PrefConfig) and cfg.data.streaming:
        from isdaa.data.stream import StreamSource

        if not cfg.max_steps:
            raise ValueError("data.streaming reads the rows as training consumes them: set max_steps (the run "
                             "reads max_steps x batch_size rows, in file order)")
        batch_source = StreamSource(cfg)
        callbacks = (*callbacks, _StreamStats(batch_source))
    if batch_source is not None and not cfg.max_steps:
        raise ValueError("training from a batch_source needs max_steps")
    task = task_cls(cfg)
    callbacks = [*_task_callbacks(task), *callbacks, *default_callbacks(cfg)]
    return run(cfg, task, callbacks=callbacks, batch_source=batch_source, resume=resume, overwrite=overwrite)


def _task_callbacks(task) -> list:
    """Callbacks the task's own config asks for, run before the others: ref_sync (TR-DPO's reference update)."""
    from isdaa.train.ref_sync import callbacks

    return callbacks(task)


def default_callbacks(cfg) -> list:
    """From the config: the live over-optimization eval (`eval` block), then the model card / hub push."""
    from isdaa.hub import HubCallback

    out = []
    if getattr(cfg, "eval", None) is not None:
        from isdaa.evaluate.live import LiveEvalCallback

        out.append(LiveEvalCallback.from_config(cfg))
    return [*out, HubCallback()]


class _StreamStats:
    """The streamed rows' data/* counts (dropped pairs, long prompts) into the summary."""

    def __init__(self, source):
        self.source = source

    def on_train_begin(self, ctx):
        pass

    def on_step_end(self, ctx):
        pass

    def on_train_end(self, ctx):
        if ctx.summary is not None:
            ctx.summary.update(self.source.stats)
            if ctx.is_main_process:
                from pathlib import Path

                from isdaa.io import atomic_write_json

                atomic_write_json(Path(ctx.output_dir) / "summary.json", ctx.summary)


__all__ = ["train"]
