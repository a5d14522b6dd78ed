"""TRL 1.x's vocabulary as isdaa reads it: which TRL key is an alias of which isdaa key, which converts, which
is accepted with no effect or refused (and why), the block switches, the loss types (from the registry) and
the defaults that differ. The translation itself is `isdaa.trl_compat`; docs/TRL.md is these tables in prose
(tests/test_trl_compat.py keeps both true).
"""

from __future__ import annotations

from isdaa.registry import METHODS

# TRL name -> isdaa dotted key, value unchanged
ALIASES = {
    "model_name_or_path": "model.name_or_path",
    "model_revision": "model.revision",
    "trust_remote_code": "model.trust_remote_code",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "attn_implementation": "model.attn_implementation",
    "dataset_name": "data.train",
    "dataset_config": "data.subset",
    "dataset_train_split": "data.train_split",
    "dataset_test_split": "data.eval_split",
    "dataset_streaming": "data.streaming",
    "dataset_num_proc": "data.num_proc",
    "datasets": "data.train",                  # TRL's mixture list (path, name, split, data_files, ...)
    "streaming": "data.streaming",             # TRL's mixture streaming flag
    "max_length": "data.max_length",
    "max_prompt_length": "data.max_prompt_length",
    "learning_rate": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "adam_beta1": "optim.adam_beta1",
    "adam_beta2": "optim.adam_beta2",
    "adam_epsilon": "optim.adam_eps",
    "max_grad_norm": "optim.max_grad_norm",
    "warmup_ratio": "optim.warmup_ratio",      # TRL < 1 / transformers < 5
    "num_train_epochs": "epochs",
    "per_device_eval_batch_size": "eval_batch_size",
    "precompute_ref_batch_size": "eval_batch_size",
    "hub_private_repo": "hub_private",
    "torch_compile": "compile",                # isdaa compiles the decoder layers (regional), TRL the model
    "lora_r": "model.lora.r",
    "lora_alpha": "model.lora.alpha",
    "lora_dropout": "model.lora.dropout",
    "lora_target_modules": "model.lora.target_modules",
    "ref_model_mixup_alpha": "ref_sync.alpha",  # TR-DPO, with sync_ref_model (SWITCHES)
    "ref_model_sync_steps": "ref_sync.steps",
}

# TRL name -> (isdaa key it sets, one line for --help)
CONVERTED = {
    "loss_type": ("method", "sigmoid -> dpo, ipo -> ipo (a one-element list is accepted)"),
    "lr_scheduler_type": ("optim.scheduler", "cosine | linear | constant | constant_with_warmup"),
    "optim": ("optim.optimizer", "adamw_torch / adamw_torch_fused / adamw_hf -> adamw, sgd -> sgd"),
    "bf16": ("mixed_precision", "true -> bf16; bf16 and fp16 false -> no"),
    "fp16": ("mixed_precision", "true -> fp16"),
    "dtype": ("model.dtype", "bfloat16 -> bf16, float16 -> fp16, float32 -> fp32, auto"),
    "torch_dtype": ("model.dtype", "as dtype"),
    "use_peft": ("model.lora", "true: LoRA with lora_r / lora_alpha / lora_dropout / lora_target_modules"),
    "precompute_ref_log_probs": ("ref_logps", "true -> precompute, false -> on_the_fly"),
    "per_device_train_batch_size": ("micro_batch_size", "batch_size = this x gradient_accumulation_steps x "
                                                        "processes"),
    "gradient_accumulation_steps": ("batch_size", "see per_device_train_batch_size"),
    "eval_strategy": ("data.eval", "steps: evaluate on dataset_test_split every eval_steps; no: none"),
    "max_steps": ("max_steps", "-1 (TRL's 'unset') -> no limit"),
    "warmup_steps": ("optim.warmup_steps", "an integer: steps; a float in (0, 1): optim.warmup_ratio "
                                           "(transformers 5)"),
}

# TRL keys accepted with no effect: isdaa already behaves as the accepted values ask
NO_OP = {
    "remove_unused_columns": None,          # isdaa reads only the columns it needs
    "logging_strategy": ("steps",),
    "save_strategy": ("steps",),
    "do_train": (True,),
    "do_eval": None,                        # evaluation follows eval_strategy / data.eval
    "truncation_mode": ("keep_start",),     # TRL's only supported mode; isdaa's rule is docs/ARCHITECTURE.md
    "bf16_full_eval": (False,),
    "logging_first_step": (False,),         # isdaa logs every logging_steps (and the last step)
}

# TRL keys refused, with the reason (instead of a generic "unknown key"). A refused key at a value in
# HARMLESS (TRL's default: the feature off) is accepted, so that a config holding TRL's defaults loads.
REFUSED = {
    "hub_token": "secrets are never read from a config: set the HF_TOKEN environment variable",
    "loss_weights": "loss_weights go with a loss_type list; isdaa maps [sigmoid] and [ipo] with weight 1",
    "label_smoothing": "robust / EXO losses are not in isdaa's registry",
    "f_divergence_type": "f-DPO divergences are not in isdaa's registry",
    "f_alpha_divergence_coef": "f-DPO divergences are not in isdaa's registry",
    "ld_alpha": "LD-DPO is not implemented",
    "discopop_tau": "DiscoPOP is not implemented",
    "padding_free": "padding-free batches are not implemented (isdaa pads to the batch's longest sequence; "
                    "pack_pairs puts each pair in one row)",
    "overwrite_output_dir": "pass --overwrite to `isdaa train`",
    "use_liger_kernel": "not supported",
    "load_in_4bit": "quantized training is not supported",
    "load_in_8bit": "quantized training is not supported",
    "lora_task_type": "isdaa sets CAUSAL_LM / SEQ_CLS itself",
    "use_rslora": "not supported (LoRA options: lora_r, lora_alpha, lora_dropout, lora_target_modules)",
    "use_dora": "not supported (LoRA options: lora_r, lora_alpha, lora_dropout, lora_target_modules)",
    "model_init_kwargs": "use model.dtype, model.attn_implementation, model.revision, model.trust_remote_code",
    "rpo_alpha": "TRL 1.x removed it (RPO is loss_type: [sigmoid, sft]); isdaa's RPO is method: rpo, loss.rpo_eta",
}
# TRL's default for each refused feature: accepted, it asks for nothing isdaa lacks
HARMLESS = {"loss_weights": (None,), "label_smoothing": (0, 0.0), "f_divergence_type": ("reverse_kl",),
            "f_alpha_divergence_coef": (0.5,), "ld_alpha": (None,), "discopop_tau": (0.05,), "padding_free": (False,),
            "overwrite_output_dir": (False,),
            "use_liger_kernel": (False,), "load_in_4bit": (False,), "load_in_8bit": (False,), "use_rslora": (False,),
            "use_dora": (False,), "model_init_kwargs": (None,), "rpo_alpha": (None,), "lora_task_type": ("CAUSAL_LM",)}
# A TRL block switch and its member keys: members are ignored (with a warning unless at TRL's defaults)
# while the switch is off, as TRL ignores them. isdaa block -> members' targets: ALIASES; the block's fields
# the switch sets itself (unless a member sets them); SWITCH_EXTRA: other keys the switch sets.
SWITCHES = {
    "use_peft": ("model.lora", ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"),
                 {"target_modules": None}),   # TRL's default: peft's per-architecture modules
    # WPO as TRL 1.x computes it: exp(mean adjusted log-prob of y_c + of y_r), NOT clamped (TRL 0.x clamped at 1)
    "use_weighting": ("loss", (), {"wpo_weighting": True, "wpo_max_weight": None}),
    # TR-DPO: TRL's reference is scored in memory (isdaa's default precomputes it once, which a moving one cannot)
    "sync_ref_model": ("ref_sync", ("ref_model_mixup_alpha", "ref_model_sync_steps"),
                       {"alpha": 0.6, "steps": 512}),
}
SWITCH_EXTRA = {"sync_ref_model": {"ref_logps": "on_the_fly"}}
MEMBER_DEFAULTS = {"ref_model_mixup_alpha": 0.6, "ref_model_sync_steps": 512}  # harmless with sync_ref_model off

def _trl_loss(method) -> object:
    """The TRL_LOSSES entry of a registry method: its keys as a mapping (every loss weight must then be 1), or,
    when a TRL loss weight becomes one of its options (`Method.trl_weights`), a function of the weights
    returning them (None: a weight isdaa cannot express, refused)."""
    fixed = {"method": method.name, **{f"loss.{k}": v for k, v in method.trl_options.items()}}
    if not method.trl_weights:
        return fixed

    def with_weights(weights: dict) -> dict | None:
        if any(float(w) != 1.0 for t, w in weights.items() if t not in method.trl_weights):
            return None
        return {**fixed, **{f"loss.{opt}": float(weights[t]) for t, opt in method.trl_weights.items()}}

    return with_weights


# loss_type (a list in TRL 1.x; a sum, so sorted here) -> isdaa keys, for the combinations isdaa has exactly:
# from the registry (`Method.trl_loss_type`, `trl_options`, `trl_weights`); tests/test_trl_compat.py checks
# each against TRL's own loss code. [sigmoid, sft] -> dpo-sft (its sft weight -> dpo_sft_weight).
TRL_LOSSES = {m.trl_loss_type: _trl_loss(m) for m in METHODS.values() if m.trl_loss_type and not m.importance_weighted}
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant", "constant_with_warmup": "constant"}
OPTIMIZERS = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "adamw": "adamw",
              "sgd": "sgd"}
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "auto": "auto", "bf16": "bf16", "fp16": "fp16",
          "fp32": "fp32"}
# isdaa defaults that differ from TRL 1.x's (DPOConfig / TrainingArguments): isdaa key -> (TRL key, TRL's
# default). Listed once at the start of a run for the keys a config left at isdaa's default
# (train/notices.py); tests/test_trl_compat.py checks them against TRL's own dataclass.
DEFAULT_DIFFERENCES = {
    "optim.scheduler": ("lr_scheduler_type", "linear"),
    "optim.warmup_steps": ("warmup_steps", 0),
    "epochs": ("num_train_epochs", 3.0),
    "micro_batch_size": ("per_device_train_batch_size", 8),
    "batch_size": ("per_device_train_batch_size x gradient_accumulation_steps", 8),
    "data.max_length": ("max_length", 1024),
    "data.max_prompt_length": ("max_prompt_length", "none (prompts cut by max_length only)"),
    "model.gradient_checkpointing": ("gradient_checkpointing", True),
    "mixed_precision": ("bf16", True),
    "ref_logps": ("precompute_ref_log_probs", False),
    "save_steps": ("save_steps", 500),
    "seed": ("seed", 42),
}
TRL_DEFAULT_MICRO_BATCH = 8  # TrainingArguments.per_device_train_batch_size
DEFAULT_PROMPT_LIMIT = 512  # isdaa's data.max_prompt_length
TRL_DEFAULT_LOGGING_STEPS = 10  # DPOConfig.logging_steps
COMMAND_LINE = "command line"
