"""The engine's front door: `run(cfg, callbacks=(), batch_source=None, resume=False, overwrite=False)`.

The config's type picks the task: SFTConfig -> sft.py, RMConfig -> rm.py, PrefConfig -> pref.py; loop.py
runs them all. The engine adds only the callbacks that are part of training itself, before the given ones:
TR-DPO's reference update (`ref_sync`), the drift alarm (`stop_on_drift`) and the streamed rows' counts.
What is built on the engine (the live evaluator, model cards and hub pushes) comes from the caller:
`isdaa.api.train` adds it from the config. `batch_source(step, model, tokenizer)` (preference training
only) replaces the dataset (`data.streaming` makes one: isdaa.data.stream): it returns this process's pairs
for optimizer step `step` (0-based), either as rows (`prompt` / `chosen` / `rejected`, optional `ref_*` /
behavior logps columns; rows without reference log-probs are scored by the reference model on the fly) or
as one collated batch (`isdaa.data.collate_pref`'s keys). With a batch_source, `max_steps` must be set.
"""

from __future__ import annotations


def run(cfg, callbacks=(), batch_source=None, resume: bool = False, overwrite: bool = False) -> dict:
    """Train `cfg` with `callbacks`; returns the summary (also written to OUTPUT_DIR/summary.json)."""
    from isdaa.config import PrefConfig
    from isdaa.train import loop

    task = task_for(cfg)
    own = []
    if batch_source is not None and not isinstance(cfg, PrefConfig):
        raise ValueError("batch_source is for preference training only")
    if batch_source is None and isinstance(cfg, PrefConfig) and cfg.data.streaming:
        from isdaa.data.stream import StreamSource

        if not cfg.max_steps:
            raise ValueError("data.streaming reads the rows as training consumes them: set max_steps (the run "
                             "reads max_steps x batch_size rows, in file order)")
        batch_source = StreamSource(cfg)
        own.append(_StreamStats(batch_source))
    if batch_source is not None and not cfg.max_steps:
        raise ValueError("training from a batch_source needs max_steps")
    if isinstance(cfg, PrefConfig):
        from isdaa.train import ref_sync
        from isdaa.train.drift_stop import drift_callbacks

        own = [*ref_sync.callbacks(task), *drift_callbacks(cfg), *own]  # the reference update runs first
    return loop.run(cfg, task, callbacks=[*own, *callbacks], batch_source=batch_source, resume=resume,
                    overwrite=overwrite)


def task_for(cfg):
    """The task that trains `cfg` (its type decides)."""
    from isdaa.config import PrefConfig, RMConfig, SFTConfig

    if isinstance(cfg, PrefConfig):
        from isdaa.train.pref import PrefTask as task_cls
    elif isinstance(cfg, RMConfig):
        from isdaa.train.rm import RMTask as task_cls
    elif isinstance(cfg, SFTConfig):
        from isdaa.train.sft import SFTTask as task_cls
    else:
        raise TypeError(f"training takes an SFTConfig, RMConfig or PrefConfig, got {type(cfg).__name__}")
    return task_cls(cfg)


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
