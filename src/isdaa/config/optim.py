"""`optim:`: the optimizer and its learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

from isdaa.config.checks import _check, _check_choices, one_of


@dataclass
class OptimConfig:
    optimizer: str = one_of("adamw", "sgd")  # adamw (paper) | sgd (plain SGD with momentum `sgd_momentum`)
    lr: float = 1e-6                   # paper, Appendix C
    sgd_momentum: float = 0.0          # momentum of optimizer: sgd
    weight_decay: float = 0.0          # decoupled (AdamW); none on biases and norms
    adam_beta1: float = 0.9            # AdamW first-moment decay
    adam_beta2: float = 0.999          # AdamW second-moment decay
    adam_eps: float = 1e-8             # AdamW epsilon
    scheduler: str = one_of("cosine", "linear", "constant")  # cosine | linear | constant (all with linear warmup)
    warmup_steps: int = 100            # linear warmup steps
    warmup_ratio: float = 0.0          # used instead of warmup_steps when > 0
    max_grad_norm: float | None = 1.0  # None or 0: no clipping (the norm is still logged)

    def __post_init__(self):
        _check_choices(self, "optim.")
        _check(math.isfinite(self.lr) and self.lr > 0, f"optim.lr must be > 0 and finite, got {self.lr}")
        _check(0 <= self.sgd_momentum < 1, "optim.sgd_momentum must be in [0, 1)")
        _check(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        _check(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "optim.adam_beta1/2 must be in [0, 1)")
        _check(self.warmup_steps >= 0 and 0 <= self.warmup_ratio < 1, "optim warmup must be >= 0 (ratio < 1)")
        _check(self.max_grad_norm is None or self.max_grad_norm >= 0, "optim.max_grad_norm must be >= 0")
