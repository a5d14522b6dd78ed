"""TRL's key names accepted as aliases of isdaa's, so that a DPOConfig / TrainingArguments / ModelConfig /
ScriptArguments YAML (as the TRL docs write one) trains unchanged. `translate` maps a flat TRL-style
mapping onto isdaa's nested keys; the typed config then validates it and the run writes it resolved
(isdaa's names only). The full list, and the TRL keys deliberately refused, is docs/TRL.md.

    translate({"learning_rate": 5e-7, "loss_type": "sigmoid", "bf16": True}, PrefConfig)
    -> ({"optim": {"lr": 5e-7}, "method": "dpo", "mixed_precision": "bf16"}, [])

An isdaa name always wins over an alias (a key that is both is isdaa's); an alias and the isdaa key it
stands for given with different values is an error. Problems are returned, not raised, so that
`isdaa.config.load_config` reports every one of them at once.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import typing
import warnings

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

# TRL keys refused, with the reason (instead of a generic "unknown key")
REFUSED = {
    "hub_token": "secrets are never read from a config: set the HF_TOKEN environment variable",
    "loss_weights": "isdaa trains one method per run (no loss mixtures)",
    "label_smoothing": "robust / EXO losses are not in isdaa's registry",
    "f_divergence_type": "f-DPO divergences are not in isdaa's registry",
    "f_alpha_divergence_coef": "f-DPO divergences are not in isdaa's registry",
    "use_weighting": "WPO weighting is not implemented; isdaa's weighting is IS (method: is-dpo ...)",
    "ld_alpha": "LD-DPO is not implemented",
    "discopop_tau": "DiscoPOP is not implemented",
    "sync_ref_model": "TR-DPO reference syncing is not implemented",
    "ref_model_mixup_alpha": "TR-DPO reference syncing is not implemented",
    "ref_model_sync_steps": "TR-DPO reference syncing is not implemented",
    "padding_free": "padding-free batches are not implemented (isdaa pads to the batch's longest sequence)",
    "save_total_limit": "use resume_state_keep (resume state) and save_steps / save_fractions",
    "overwrite_output_dir": "pass --overwrite to `isdaa train`",
    "use_liger_kernel": "not supported",
    "load_in_4bit": "quantized training is not supported",
    "load_in_8bit": "quantized training is not supported",
    "lora_task_type": "isdaa sets CAUSAL_LM / SEQ_CLS itself",
    "use_rslora": "not supported (LoRA options: lora_r, lora_alpha, lora_dropout, lora_target_modules)",
    "use_dora": "not supported (LoRA options: lora_r, lora_alpha, lora_dropout, lora_target_modules)",
    "model_init_kwargs": "use model.dtype, model.attn_implementation, model.revision, model.trust_remote_code",
    "rpo_alpha": "isdaa's RPO is method: rpo with loss.rpo_eta (METHOD.md)",
}

TRL_LOSSES = {"sigmoid": "dpo", "ipo": "ipo"}
SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant", "constant_with_warmup": "constant"}
OPTIMIZERS = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "adamw": "adamw",
              "sgd": "sgd"}
DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "auto": "auto", "bf16": "bf16", "fp16": "fp16",
          "fp32": "fp32"}
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
TRL_DEFAULT_MICRO_BATCH = 8  # TrainingArguments.per_device_train_batch_size
TRL_DEFAULT_LOGGING_STEPS = 10  # DPOConfig.logging_steps


def trl_names() -> list[str]:
    """Every TRL key this module accepts (aliases, converted and no-op keys)."""
    return sorted({*ALIASES, *CONVERTED, *NO_OP})


def _fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


def _set(out: dict, dotted: str, value, origin: str, problems: list) -> None:
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            problems.append(f"{origin!r} sets {dotted!r}, but {part!r} is not a mapping")
            return
    if last in node and node[last] != value:
        problems.append(f"{origin!r} (TRL name for {dotted!r}) = {value!r} conflicts with {dotted} = {node[last]!r}")
        return
    node[last] = value


def world_size() -> int:
    """Processes of this launch (accelerate / torchrun set WORLD_SIZE); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def translate(data: dict, cls) -> tuple[dict, list[str]]:
    """(isdaa-keyed mapping, problems) for `data`, a config mapping that may use TRL's names. Keys that are
    neither TRL's nor isdaa's pass through unchanged (`unknown_keys` reports them)."""
    if not isinstance(data, dict):
        return data, []
    data = copy.deepcopy(data)  # aliases write into nested mappings: never into the caller's
    names = _fields(cls)
    out, problems, trl = {}, [], {}
    for key, value in data.items():
        if key in names or key == "kind":
            if key == "max_steps" and value is not None and str(value).strip() == "-1":
                value = None  # TRL's "unset"
            if key == "optim" and isinstance(value, str):  # TRL's optimizer name
                trl[key] = value
                continue
            if key == "method" and TRL_LOSSES.get(value, value) != value:  # e.g. method=sigmoid
                problems.append(f"method {value!r} is TRL's loss_type name: isdaa's is "
                                f"method: {TRL_LOSSES[value]} (or loss_type: {value})")
                continue
            out[key] = _merge_dict(out.get(key), value)
        elif key in ALIASES or key in CONVERTED or key in NO_OP or key in REFUSED:
            trl[key] = value
        else:
            out[key] = value
    for key, value in trl.items():
        if key in REFUSED:
            problems.append(f"TRL key {key!r} is not supported: {REFUSED[key]}")
        elif key in NO_OP:
            allowed = NO_OP[key]
            if allowed is not None and value not in allowed:
                problems.append(f"TRL key {key!r} = {value!r} is not supported (isdaa behaves as {allowed[0]!r})")
        elif key in ALIASES:
            if key in LORA_KEYS:
                continue  # below, with use_peft
            _set(out, ALIASES[key], value, key, problems)
    _convert(trl, out, problems)
    return out, problems


def _merge_dict(old, new):
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **new}
    return new


def _convert(trl: dict, out: dict, problems: list) -> None:
    """The TRL keys whose values change on the way (CONVERTED)."""
    if "loss_type" in trl:
        value = trl["loss_type"]
        value = value[0] if isinstance(value, list) and len(value) == 1 else value
        if value in TRL_LOSSES:
            _set(out, "method", TRL_LOSSES[value], "loss_type", problems)
        else:
            problems.append(f"TRL loss_type {value!r} is not supported: isdaa maps sigmoid -> dpo and ipo -> ipo; "
                            "its other methods (rpo, chipo, rdpo, is-*) are set with `method`")
    for key, table, target in (("lr_scheduler_type", SCHEDULERS, "optim.scheduler"),
                               ("optim", OPTIMIZERS, "optim.optimizer")):
        if key in trl:
            if trl[key] in table:
                _set(out, target, table[trl[key]], key, problems)
            else:
                problems.append(f"TRL {key} {trl[key]!r} is not supported (one of {sorted(table)})")
    for key in ("dtype", "torch_dtype"):
        if key in trl:
            if trl[key] in DTYPES:
                _set(out, "model.dtype", DTYPES[trl[key]], key, problems)
            else:
                problems.append(f"TRL {key} {trl[key]!r} is not supported (one of {sorted(DTYPES)})")
    if "bf16" in trl or "fp16" in trl:
        bf16, fp16 = bool(trl.get("bf16")), bool(trl.get("fp16"))
        if bf16 and fp16:
            problems.append("TRL bf16 and fp16 are both true")
        else:
            _set(out, "mixed_precision", "bf16" if bf16 else "fp16" if fp16 else "no", "bf16/fp16", problems)
    if "warmup_steps" in trl:
        w = trl["warmup_steps"]
        ratio = isinstance(w, float) and 0 < w < 1
        _set(out, "optim.warmup_ratio" if ratio else "optim.warmup_steps", w, "warmup_steps", problems)
    if "precompute_ref_log_probs" in trl:
        _set(out, "ref_logps", "precompute" if trl["precompute_ref_log_probs"] else "on_the_fly",
             "precompute_ref_log_probs", problems)
    _peft(trl, out, problems)
    _batch(trl, out, problems)
    if "eval_strategy" in trl:
        strategy = "no" if trl["eval_strategy"] is False else trl["eval_strategy"]
        if strategy == "steps":
            data = out.get("data") or {}
            if not data.get("eval"):
                _set(out, "data.eval", data.get("train"), "eval_strategy", problems)
            if out.get("eval_steps") is None:  # as TrainingArguments: eval_steps defaults to logging_steps
                out["eval_steps"] = out.get("logging_steps", TRL_DEFAULT_LOGGING_STEPS)
        elif strategy != "no":
            problems.append(f"TRL eval_strategy {strategy!r} is not supported (steps | no; isdaa counts steps)")


def _peft(trl: dict, out: dict, problems: list) -> None:
    lora = {ALIASES[k].rsplit(".", 1)[1]: trl[k] for k in LORA_KEYS if k in trl}
    if trl.get("use_peft"):
        lora.setdefault("target_modules", None)  # TRL's default: peft's per-architecture modules
        for k, v in lora.items():
            _set(out, f"model.lora.{k}", v, f"lora_{k}" if k != "target_modules" else "lora_target_modules",
                 problems)
    elif lora:  # as TRL: LoRA options without use_peft are ignored (said aloud, not silently)
        warnings.warn(f"{sorted(k for k in LORA_KEYS if k in trl)} given without use_peft: true; ignored (as TRL "
                      "does), training the full model", stacklevel=3)


def _batch(trl: dict, out: dict, problems: list) -> None:
    if "per_device_train_batch_size" not in trl and "gradient_accumulation_steps" not in trl:
        return
    micro = trl.get("per_device_train_batch_size", TRL_DEFAULT_MICRO_BATCH)
    accum = trl.get("gradient_accumulation_steps", 1)
    try:
        micro, accum = int(micro), int(accum)
    except (TypeError, ValueError):
        problems.append(f"per_device_train_batch_size ({micro!r}) and gradient_accumulation_steps ({accum!r}) "
                        "must be integers")
        return
    _set(out, "micro_batch_size", micro, "per_device_train_batch_size", problems)
    _set(out, "batch_size", micro * accum * world_size(), "per_device_train_batch_size x "
         "gradient_accumulation_steps x processes", problems)


# ---------------------------------------------------------------- unknown keys, reported together


def _hint(tp) -> type | None:
    """The dataclass inside `X | None`, if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def dotted_names(cls, prefix: str = "") -> list[str]:
    """Every key of `cls`, nested ones dotted (`optim.lr`)."""
    out = []
    hints = typing.get_type_hints(cls)
    for name in _fields(cls):
        out.append(prefix + name)
        sub = _hint(hints[name])
        if sub is not None:
            out += dotted_names(sub, prefix + name + ".")
    return out


def suggest(key: str, cls, prefix: str = "") -> str:
    """` (did you mean 'x'?)` from isdaa's names at this level, all of isdaa's dotted names, and TRL's."""
    here = list(_fields(cls))
    vocab = here + [n for n in dotted_names(cls) if n not in here] + (trl_names() if not prefix else [])
    close = difflib.get_close_matches(key, here, n=1, cutoff=0.75) or difflib.get_close_matches(key, vocab, n=1,
                                                                                                 cutoff=0.6)
    if not close:
        return ""
    name = close[0]
    if not prefix and name not in here and (name in ALIASES or name in CONVERTED):
        target = ALIASES.get(name) or CONVERTED[name][0]
        return f" (did you mean {name!r}, TRL's name for {target!r}?)"
    return f" (did you mean {name!r}?)"


def unknown_keys(cls, data, prefix: str = "") -> list[str]:
    """One message per key of `data` that `cls` (recursively) does not have."""
    if not isinstance(data, dict):
        return []
    hints, out = typing.get_type_hints(cls), []
    for key, value in data.items():
        if key not in hints or key not in _fields(cls):
            out.append(f"unknown config key {prefix + str(key)!r}{suggest(str(key), cls, prefix)}")
            continue
        sub = _hint(hints[key])
        if sub is not None and isinstance(value, dict):
            out += unknown_keys(sub, value, prefix + key + ".")
    return out
