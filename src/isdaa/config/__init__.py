"""Typed training configs, validated at construction; YAML files and `key=value` overrides only load
into them (unknown keys are errors that name the nearest valid key).

    cfg = load_config("configs/paper/is-dpo-tldr.yaml", ["optim.lr=1e-5", "method=is-ipo"], kind="pref")

Batch sizes: `batch_size` is the GLOBAL batch (pairs for pref/rm, examples for sft) per optimizer
step; `micro_batch_size` is what one process puts through one forward. Gradient accumulation is
derived: batch_size = micro_batch_size * gradient_accumulation * num_processes, so `batch_size`
must be a multiple of `micro_batch_size` (and, at launch, of micro_batch_size * num_processes).

Modules: checks (validation helpers), model, data, optim, live_eval (the `eval:` block), train (TrainConfig,
SFTConfig, RMConfig, RUNTIME_KEYS), pref (PrefConfig, LossOptions, the drift alarm, TR-DPO's ref_sync),
schedule (step and warmup counts), load (dicts, YAML files and overrides in; dicts and YAML out).
"""

from isdaa.config.checks import YAML_FALSE, YAML_TRUE, choices_of, one_of
from isdaa.config.data import DataConfig
from isdaa.config.live_eval import LiveEvalConfig
from isdaa.config.load import (
    CONFIG_CLASSES,
    KIND_OF,
    from_dict,
    load_config,
    load_run_config,
    parse_overrides,
    to_dict,
    to_yaml,
)
from isdaa.config.model import LoraConfig, ModelConfig
from isdaa.config.optim import OptimConfig
from isdaa.config.pref import DriftStopConfig, LossOptions, PrefConfig, RefSyncConfig
from isdaa.config.schedule import check_schedule, total_steps, warmup_steps
from isdaa.config.train import RUNTIME_KEYS, RMConfig, SFTConfig, TrainConfig

__all__ = [
    "CONFIG_CLASSES", "KIND_OF", "RUNTIME_KEYS", "YAML_FALSE", "YAML_TRUE", "DataConfig", "DriftStopConfig",
    "LiveEvalConfig", "LoraConfig", "LossOptions", "ModelConfig", "OptimConfig", "PrefConfig", "RMConfig",
    "RefSyncConfig", "SFTConfig", "TrainConfig", "check_schedule", "choices_of", "from_dict", "load_config",
    "load_run_config", "one_of", "parse_overrides", "to_dict", "to_yaml", "total_steps", "warmup_steps",
]
