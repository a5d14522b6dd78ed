"""The library's front door: a config in, a trained run out, with every part the config asks for.

    from isdaa.api import train
    summary = train(load_config("configs/examples/tiny-cpu-dpo.yaml", kind="pref"))

`train` runs the engine (`isdaa.train.engine.run`) with the caller's callbacks, then those built on the engine
that the config asks for: the live over-optimization evaluator (the `eval` block, isdaa.evaluate.live) and the
model card / hub push (isdaa.hub). This module wires; it holds no training logic.
"""

from __future__ import annotations


def train(cfg, callbacks=(), batch_source=None, resume: bool = False, overwrite: bool = False) -> dict:
    """Train under `cfg` (an SFTConfig, RMConfig or PrefConfig); returns the run's summary. `callbacks`:
    `isdaa.train.callbacks.TrainerCallback`s, run before the config's own; `batch_source`, `resume`,
    `overwrite`: see `isdaa.train.engine.run`."""
    from isdaa.train.engine import run

    return run(cfg, [*callbacks, *default_callbacks(cfg)], batch_source=batch_source, resume=resume,
               overwrite=overwrite)


def default_callbacks(cfg) -> list:
    """From the config: the live over-optimization eval (`eval` block), then the model card / hub push."""
    from isdaa.hub import HubCallback

    out = []
    if getattr(cfg, "eval", None) is not None:
        from isdaa.evaluate.live import LiveEvalCallback

        out.append(LiveEvalCallback.from_config(cfg))
    return [*out, HubCallback()]


__all__ = ["default_callbacks", "train"]
