"""A run's step count and warmup, the one count the loop, the config checks and the lab all use."""

from __future__ import annotations

import math

from isdaa.config.optim import OptimConfig
from isdaa.config.train import TrainConfig


def total_steps(n_train: int, batch_size: int, epochs: float, max_steps: int | None = None) -> int:
    """A run's optimizer steps: `max_steps`, else ceil(epochs x full batches per epoch), at least 1 (the last
    partial batch of an epoch is dropped). The loop, this module's checks and the lab all count with it."""
    return max_steps or max(1, math.ceil(epochs * (n_train // batch_size)))


def warmup_steps(optim: OptimConfig, total: int) -> int:
    """The linear warmup's steps: ceil(warmup_ratio x total) when the ratio is set, else warmup_steps."""
    return math.ceil(optim.warmup_ratio * total) if optim.warmup_ratio > 0 else optim.warmup_steps


def check_schedule(cfg: TrainConfig, n_train: int, online: bool = False) -> list[str]:
    """Settings that cannot train as meant, said with what to set. A batch larger than the data is an
    error; a warmup of at least the run's steps (the learning rate never reaches optim.lr) is
    returned as a warning message. Same step count as the loop: (n_train // batch_size) per epoch."""
    steps = 0 if online and not cfg.max_steps else total_steps(n_train, cfg.batch_size, cfg.epochs, cfg.max_steps)
    if not online and n_train < cfg.batch_size:
        raise ValueError(f"{n_train} training examples make no full batch of batch_size={cfg.batch_size}: set "
                         f"batch_size <= {n_train} (and micro_batch_size, now {cfg.micro_batch_size}, dividing it), "
                         "or give more data")
    o = cfg.optim
    warmup = warmup_steps(o, steps)
    if steps and warmup >= steps:
        return [f"warmup ({warmup} steps) >= the run's {steps} steps: the learning rate never reaches optim.lr="
                f"{o.lr:g} (the model barely moves); set optim.warmup_steps below {steps} (e.g. "
                f"optim.warmup_steps={steps // 10}) or optim.warmup_ratio=0.1, or train longer"]
    return []
