"""`model:` (the policy, its dtype and loading) and its optional `lora:` block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from isdaa.config.checks import _check, _check_choices, one_of


@dataclass
class LoraConfig:
    r: int = 16                       # adapter rank
    alpha: int = 32                   # lora_alpha (scale alpha / r)
    dropout: float = 0.05             # lora_dropout
    target_modules: Any = "all-linear"  # peft's names, or a list of module names

    def __post_init__(self):
        _check(self.r > 0 and self.alpha > 0, "lora.r and lora.alpha must be > 0")
        _check(0.0 <= self.dropout < 1.0, "lora.dropout must be in [0, 1)")


@dataclass
class ModelConfig:
    name_or_path: str = ""             # hub name or local save_pretrained folder
    revision: str | None = None        # hub branch, tag or commit of the model
    dtype: str = one_of("fp32", "bf16", "fp16", "auto", "fp64")  # weights dtype (fp64: numerical checks)
    trust_remote_code: bool = False    # off unless explicitly set
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~20% slower)
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2; None: transformers' default
    tokenizer: str | None = None    # defaults to name_or_path
    lora: LoraConfig | None = None  # set to train LoRA adapters through peft

    def __post_init__(self):
        _check(bool(self.name_or_path), "model.name_or_path is required")
        _check_choices(self, "model.")
