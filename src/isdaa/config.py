"""Typed training configs, validated at construction; YAML files and `key=value` overrides only load
into them (unknown keys are errors that name the nearest valid key).

    cfg = load_config("configs/paper/is-dpo-tldr.yaml", ["optim.lr=1e-5", "method=is-ipo"], kind="pref")

Batch sizes: `batch_size` is the GLOBAL batch (pairs for pref/rm, examples for sft) per optimizer
step; `micro_batch_size` is what one process puts through one forward. Gradient accumulation is
derived: batch_size = micro_batch_size * gradient_accumulation * num_processes, so `batch_size`
must be a multiple of `micro_batch_size` (and, at launch, of micro_batch_size * num_processes).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from isdaa.losses import METHODS, OPTIONS


def _nearest(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.0)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _one_of(value, options, what: str) -> None:
    _check(value in options, f"{what} must be one of {list(options)}, got {value!r}{_nearest(value, options)}")


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
    dtype: str = "fp32"                # weights dtype: fp32 | bf16 | fp16 | auto
    trust_remote_code: bool = False    # off unless explicitly set
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory, ~20% slower)
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2; None: transformers' default
    tokenizer: str | None = None    # defaults to name_or_path
    lora: LoraConfig | None = None  # set to train LoRA adapters through peft

    def __post_init__(self):
        _check(bool(self.name_or_path), "model.name_or_path is required")
        _one_of(self.dtype, ("fp32", "bf16", "fp16", "auto"), "model.dtype")


@dataclass
class DataConfig:
    train: Any = ""                    # hub name, local .jsonl / .json / .parquet file, glob, or a list (mixture)
    train_split: str = "train"         # split of a hub dataset
    eval: str | None = None         # same forms; for a hub dataset usually the same name
    eval_split: str = "test"           # split of the hub eval dataset
    subset: str | None = None       # hub dataset configuration name
    max_length: int = 640              # prompt + response tokens (ARCHITECTURE.md, tokenization rule)
    max_prompt_length: int = 512       # the prompt keeps its LAST max_prompt_length tokens
    max_train_examples: int | None = None  # keep the first N rows (None: all)
    max_eval_examples: int | None = None   # keep the first N eval rows (None: all)
    sft_source: str = "auto"           # sft only: auto | completion | messages | chosen
    drop_unfinished: bool = True       # pref: drop pairs flagged `chosen_finished`/`rejected_finished` false
                                       # (samples cut at max_new_tokens); false keeps them, without EOS
    streaming: bool = False            # hub datasets: read rows lazily (with max_*_examples: only those rows)
    num_proc: int | None = None        # processes for datasets.load_dataset (hub download / preparation)

    def __post_init__(self):
        _check(bool(self.train), "data.train is required (hub name or local file)")
        _check(self.max_length > 0 and self.max_prompt_length > 0, "data.max_length and max_prompt_length must be > 0")
        _check(self.max_prompt_length < self.max_length, "data.max_prompt_length must be < data.max_length")
        for name in ("max_train_examples", "max_eval_examples"):
            v = getattr(self, name)
            _check(v is None or v > 0, f"data.{name} must be > 0")
        _one_of(self.sft_source, ("auto", "completion", "messages", "chosen"), "data.sft_source")
        _check(self.num_proc is None or self.num_proc > 0, "data.num_proc must be > 0")


@dataclass
class OptimConfig:
    optimizer: str = "adamw"           # adamw (paper) | sgd (plain SGD with momentum `sgd_momentum`)
    lr: float = 1e-6                   # paper, Appendix C
    sgd_momentum: float = 0.0          # momentum of optimizer: sgd
    weight_decay: float = 0.0          # decoupled (AdamW); none on biases and norms
    adam_beta1: float = 0.9            # AdamW first-moment decay
    adam_beta2: float = 0.999          # AdamW second-moment decay
    adam_eps: float = 1e-8             # AdamW epsilon
    scheduler: str = "cosine"          # cosine | linear | constant (all with linear warmup)
    warmup_steps: int = 100            # linear warmup steps
    warmup_ratio: float = 0.0          # used instead of warmup_steps when > 0
    max_grad_norm: float | None = 1.0  # None or 0: no clipping (the norm is still logged)

    def __post_init__(self):
        _one_of(self.optimizer, ("adamw", "sgd"), "optim.optimizer")
        _check(math.isfinite(self.lr) and self.lr > 0, f"optim.lr must be > 0 and finite, got {self.lr}")
        _check(0 <= self.sgd_momentum < 1, "optim.sgd_momentum must be in [0, 1)")
        _check(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        _check(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "optim.adam_beta1/2 must be in [0, 1)")
        _one_of(self.scheduler, ("cosine", "linear", "constant"), "optim.scheduler")
        _check(self.warmup_steps >= 0 and 0 <= self.warmup_ratio < 1, "optim warmup must be >= 0 (ratio < 1)")
        _check(self.max_grad_norm is None or self.max_grad_norm >= 0, "optim.max_grad_norm must be >= 0")


@dataclass
class LiveEvalConfig:
    """Live over-optimization eval every `every` steps (isdaa.evaluate.live): KL(pi_theta || pi_ref) from
    T=1 samples, golden win rate against the chosen responses when `reward` is set, eval/* metrics."""

    reward: str | None = None          # reward-model folder or `module:function`; None: KL only
    prompts: str | None = None         # dataset with `prompt` (and `chosen`); default: data.eval, else data.train
    split: str = "test"                # split of a hub `prompts` dataset
    every: int = 50                    # evaluate every N optimizer steps (and at the last step)
    n_prompts: int = 64                # the first N prompts, the same at every evaluation
    n: int = 2                         # samples per prompt for the win rate
    temperature: float = 0.7           # win-rate sampling (paper Appendix D); KL samples use T=1
    top_p: float = 0.95                # nucleus sampling for the win rate
    max_new_tokens: int = 128          # response length cap when sampling
    kl_samples: int = 1                # T=1 samples per prompt for the KL estimate
    kl_estimator: str = "k1"           # k1 | k3: which one sqrt_kl and kl_budget use
    kl_budget: float | None = None     # stop the run once sqrt(KL) exceeds it
    batch_size: int = 64               # sampling batch
    at_start: bool = False             # also evaluate after step 1
    log_generations: int = 4           # rows of the generations table per eval (0: none)

    def __post_init__(self):
        for name in ("every", "n_prompts", "n", "max_new_tokens", "kl_samples", "batch_size"):
            _check(getattr(self, name) > 0, f"eval.{name} must be > 0")
        _check(self.temperature >= 0 and 0 < self.top_p <= 1, "eval.temperature must be >= 0, eval.top_p in (0, 1]")
        _one_of(self.kl_estimator, ("k1", "k3"), "eval.kl_estimator")
        _check(self.kl_budget is None or self.kl_budget > 0, "eval.kl_budget must be > 0")
        _check(self.log_generations >= 0, "eval.log_generations must be >= 0")


def _tracker_names(value) -> list:
    """report_to: a name or list of accelerate's tracker names (or `all`); `none` / false / [] = no tracker."""
    if value in (None, False, "none", "None"):
        return []
    names = [value] if isinstance(value, str) else list(value)
    names = [n for n in names if n not in (None, False, "none", "None")]
    if names:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS  # built-in and registered trackers

        for n in names:
            _one_of(n, ("all", *LOGGER_TYPE_TO_CLASS), "report_to")
    return names


@dataclass
class TrainConfig:
    """Fields shared by sft, rm and pref runs."""

    model: ModelConfig = field(default_factory=ModelConfig)  # the policy (and default reference)
    data: DataConfig = field(default_factory=DataConfig)     # training / eval datasets and lengths
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimizer and lr schedule
    output_dir: str = ""               # the run directory (config, metrics, checkpoints, summary)
    seed: int = 0                      # model init, data order (epoch permutations), sampling
    epochs: float = 1.0                # may be fractional; max_steps wins when set
    max_steps: int | None = None       # optimizer steps; overrides epochs
    batch_size: int = 64               # global batch per optimizer step
    micro_batch_size: int = 4          # per process per forward
    mixed_precision: str = "auto"      # auto (bf16 where the GPU has it) | no | bf16 | fp16
    logging_steps: int = 10            # write a metrics.jsonl record every N steps
    eval_steps: int | None = None   # evaluate on data.eval every N steps (and at the end)
    eval_batch_size: int | None = None  # eval / reference precompute batch (default: 2 x micro_batch_size)
    save_steps: int | None = None      # checkpoint every N steps
    save_fractions: list = field(default_factory=list)  # e.g. [0.02, 0.05, 0.1] of total steps
    save_examples: list = field(default_factory=list)   # example counts (global) to checkpoint at
    save_initial: bool = False         # checkpoints/step-00000000 = the initial policy
    save_resume_state: bool = True     # optimizer/scheduler/RNG in checkpoints (resumable)
    resume_state_keep: int = 1         # only the latest N checkpoints keep their resume state
    progress: bool = True              # tqdm bar (the lab's workers turn it off)
    report_to: list = field(default_factory=list)  # accelerate trackers (tensorboard, wandb, mlflow, ...), all, none
    push_to_hub: bool = False          # upload final/ (weights, tokenizer, model card) at the end of the run
    hub_model_id: str | None = None    # repo id for push_to_hub; default: output_dir's folder name
    hub_private: bool | None = None    # private repo on creation (None: the hub's default)
    eval: LiveEvalConfig | None = None  # live over-optimization eval during training (evaluate/live.py)
    num_threads: int | None = None  # torch.set_num_threads
    run_name: str | None = None        # tracker run name (default: output_dir's folder name)
    max_nonfinite_steps: int = 3       # non-finite loss/gradient: the step is skipped; this many in a row stop
    compile: bool = False              # torch.compile each decoder layer in place (regional compilation; TRL:
                                       # torch_compile); README 'Performance' says when it pays off
    response_only_head: bool = True    # sft/pref: LM head on response-predicting positions only (same values,
                                       # less time and memory); false: full (B, T, V) logits. Models whose
                                       # forward takes no boolean logits_to_keep use full logits anyway.

    def __post_init__(self):
        _check(bool(self.output_dir), "output_dir is required")
        _check(self.batch_size > 0 and self.micro_batch_size > 0, "batch_size and micro_batch_size must be > 0")
        _check(self.batch_size % self.micro_batch_size == 0,
               f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size}): "
               "gradient accumulation = batch_size / (micro_batch_size * num_processes)")
        _check(self.epochs > 0, "epochs must be > 0")
        _check(self.max_steps is None or self.max_steps > 0, "max_steps must be > 0")
        _check(self.logging_steps >= 1, "logging_steps must be >= 1")
        for name in ("eval_steps", "save_steps", "eval_batch_size", "num_threads"):
            v = getattr(self, name)
            _check(v is None or v > 0, f"{name} must be > 0")
        _check(all(0 < f <= 1 for f in self.save_fractions), "save_fractions must lie in (0, 1]")
        _check(all(int(e) > 0 for e in self.save_examples), "save_examples must be > 0")
        _check(self.resume_state_keep >= 1, "resume_state_keep must be >= 1")
        _check(self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1")
        _check(isinstance(self.response_only_head, bool), "response_only_head must be true or false")
        _check(isinstance(self.compile, bool), "compile must be true or false")
        _one_of(self.mixed_precision, ("auto", "no", "bf16", "fp16"), "mixed_precision")
        self.report_to = _tracker_names(self.report_to)

    @property
    def kind(self) -> str:
        return KIND_OF[type(self)]


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning: NLL on completion tokens only, averaged over the global batch's tokens."""

    def __post_init__(self):
        super().__post_init__()


@dataclass
class RMConfig(TrainConfig):
    """Bradley-Terry reward model (Eq. 2) on a one-label sequence classifier."""

    def __post_init__(self):
        super().__post_init__()
        _check(self.eval is None, "the eval block (live generation eval) is for sft and pref runs, not rm")


def _check_loss_options(self):
    for option in OPTIONS.values():
        try:
            option.check(getattr(self, option.name))
        except (TypeError, ValueError) as err:
            raise ValueError(f"loss.{err}") from None


# Options forwarded to `isdaa.losses.preference_loss`: one field per entry of the registry's OPTIONS
# (name, type, default and check live there; docs/METHOD.md has the formulas).
LossOptions = dataclasses.make_dataclass(
    "LossOptions",
    [(o.name, o.annotation, field(default=o.default, metadata={"doc": o.doc})) for o in OPTIONS.values()],
    namespace={"__post_init__": _check_loss_options,
               "__doc__": "Loss options (`loss.<name>`), derived from isdaa.losses.OPTIONS.",
               "__module__": __name__},
)


@dataclass
class DriftStopConfig:
    """`stop_on_drift`: a golden-free over-optimization alarm on a training-batch signal (isdaa.drift;
    the callback is isdaa.train.drift_stop). The smoothed signal is the mean of the last `smoothing`
    checks; the alarm fires after `patience` checks in a row beyond `threshold`."""

    signal: str = "drift/log_ratio_mean"  # drift/log_ratio_mean | drift/ratio_mean | is/ess | is/clip_frac
    threshold: float = -2.0            # alarm below it (above it for is/clip_frac); the signal's units
    smoothing: int = 10                # trailing mean over this many checks (1: the raw value)
    patience: int = 1                  # consecutive checks beyond the threshold before the alarm
    action: str = "stop"               # stop | keep-best (save best_by_drift/ at the alarm, train on)
    every: int | None = None           # check every N steps; default logging_steps

    def __post_init__(self):
        from isdaa.drift import TRAIN_SIGNALS, check_threshold

        _one_of(self.signal, TRAIN_SIGNALS, "stop_on_drift.signal")
        check_threshold(self.signal, self.threshold, "stop_on_drift.threshold")
        _check(self.smoothing >= 1 and self.patience >= 1, "stop_on_drift.smoothing and patience must be >= 1")
        _one_of(self.action, ("stop", "keep-best"), "stop_on_drift.action")
        _check(self.every is None or self.every >= 1, "stop_on_drift.every must be >= 1")


@dataclass
class PrefConfig(TrainConfig):
    """Preference training with any method of the registry (dpo ... is-rdpo)."""

    method: str = "dpo"                # dpo ipo rpo chipo rdpo, or is-<any> (losses.METHODS)
    beta: float = 0.1                  # KL strength of every method
    loss: LossOptions = field(default_factory=LossOptions)  # method options (METHOD.md)
    ref_model: str | None = None    # default: the initial policy (model.name_or_path)
    ref_logps: str = "precompute"      # precompute (one pass, cached) | on_the_fly (ref model in memory)
    ref_cache_dir: str | None = None  # default: $ISDAA_CACHE or ~/.cache/isdaa/ref_logps
    disable_dropout: bool = True       # dropout off in policy and reference (TRL's default): at step 1
                                       # pi_theta = pi_ref = pi_b exactly; false keeps the model's dropout
    check_logps: str = "error"         # stored ref_* / behavior log-probs vs the initial models on the
                                       # trainer's ids, before training: error | recompute | off
    check_logps_rows: int = 32         # rows sampled for that check
    stop_on_drift: DriftStopConfig | None = None  # golden-free alarm: stop or keep best_by_drift/
    pack_pairs: bool = True  # one row [prompt, chosen, rejected] per pair, the prompt once (same values), where
    #                          the model takes a 4D mask (sdpa, eager); on an H200 in bf16 1.19-1.24x faster at 200M
    #                          with 0.83x the GPU memory, 0.97x at 40M (benchmarks/README.md); false: one row each
    head_chunk_mb: float = 256.0  # LM head: beyond this many MiB of response logits, the head runs in chunks of
    #                              rows of this size, recomputed in the backward (isdaa.chunked_head); 0: never

    def __post_init__(self):
        super().__post_init__()
        _check(math.isfinite(self.beta) and self.beta > 0, f"beta must be > 0 and finite, got {self.beta}")
        _one_of(self.method, tuple(METHODS), "method")
        _one_of(self.ref_logps, ("precompute", "on_the_fly"), "ref_logps")
        _one_of(self.check_logps, ("error", "recompute", "off"), "check_logps")
        _check(self.check_logps_rows > 0, "check_logps_rows must be > 0")
        _check(isinstance(self.head_chunk_mb, (int, float)) and not isinstance(self.head_chunk_mb, bool)
               and math.isfinite(self.head_chunk_mb) and self.head_chunk_mb >= 0,
               f"head_chunk_mb must be a number >= 0 (0: never chunk the LM head), got {self.head_chunk_mb!r}")


def check_schedule(cfg: TrainConfig, n_train: int, online: bool = False) -> list[str]:
    """Settings that cannot train as meant, said with what to set. A batch larger than the data is an
    error; a warmup of at least the run's steps (the learning rate never reaches optim.lr) is
    returned as a warning message. Same step count as the loop: (n_train // batch_size) per epoch."""
    steps = cfg.max_steps or (0 if online else max(1, math.ceil(cfg.epochs * (n_train // cfg.batch_size))))
    if not online and n_train < cfg.batch_size:
        raise ValueError(f"{n_train} training examples make no full batch of batch_size={cfg.batch_size}: set "
                         f"batch_size <= {n_train} (and micro_batch_size, now {cfg.micro_batch_size}, dividing it), "
                         "or give more data")
    o = cfg.optim
    warmup = math.ceil(o.warmup_ratio * steps) if o.warmup_ratio > 0 else o.warmup_steps
    if steps and warmup >= steps:
        return [f"warmup ({warmup} steps) >= the run's {steps} steps: the learning rate never reaches optim.lr="
                f"{o.lr:g} (the model barely moves); set optim.warmup_steps below {steps} (e.g. "
                f"optim.warmup_steps={steps // 10}) or optim.warmup_ratio=0.1, or train longer"]
    return []


KIND_OF = {SFTConfig: "sft", RMConfig: "rm", PrefConfig: "pref"}
CONFIG_CLASSES = {v: k for k, v in KIND_OF.items()}


# ---------------------------------------------------------------- building from dicts / YAML / CLI


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass `cls` from a plain dict: nested dataclasses recursively, unknown keys rejected."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")  # noqa: TRY004
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ValueError(f"unknown config key {where + key!r}{_nearest(key, names)}")
        kwargs[key] = _coerce(hints[key], value, where + key)
    return cls(**kwargs)


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where + ".")
    if tp in (int, float) and isinstance(value, str):  # YAML 1.1 reads `1e-6` as a string
        try:
            value = tp(value)
        except ValueError:
            raise ValueError(f"config key {where!r} must be {tp.__name__}, got {value!r}") from None
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"config key {where!r} must be {tp.__name__}, got {value!r}")
    if tp is list and not isinstance(value, (list, tuple)):
        return [value]
    return value


def parse_overrides(overrides) -> dict:
    """`["optim.lr=1e-5", "method=is-dpo"]` -> nested dict; values parsed with yaml.safe_load."""
    out: dict = {}
    for item in overrides or ():
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({err.problem})") from None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with another override")  # noqa: TRY004
        node[parts[-1]] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(source=None, overrides=(), kind: str = "pref"):
    """Config of `kind` (sft | rm | pref) from a YAML path or dict, then `key=value` overrides."""
    _one_of(kind, tuple(CONFIG_CLASSES), "kind")
    if source is None:
        data = {}
    elif isinstance(source, dict):
        data = source
    else:
        try:
            data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{source}: not valid YAML ({err})") from None
        except UnicodeDecodeError as err:
            raise ValueError(f"{source}: not valid UTF-8 ({err.reason})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source}: a config must be a mapping of keys, got {type(data).__name__}")  # noqa: TRY004
    from isdaa import trl_compat

    cls = CONFIG_CLASSES[kind]
    data, problems = trl_compat.translate(data, cls)           # TRL key names -> isdaa's (trl_compat.py)
    extra, more = trl_compat.translate(parse_overrides(overrides), cls)
    data = _merge(data, extra)
    declared = data.pop("kind", kind)
    _check(declared == kind, f"this config is for `isdaa train {declared}`, not `{kind}`")
    problems += more + trl_compat.unknown_keys(cls, data)
    if problems:  # every unknown / unsupported key at once
        head = f"{source}: " if isinstance(source, (str, Path)) else ""
        raise ValueError(head + ("; ".join(problems) if len(problems) == 1 else
                                 f"{len(problems)} config problems:\n  - " + "\n  - ".join(problems)))
    return from_dict(cls, data)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump({"kind": cfg.kind, **to_dict(cfg)}, sort_keys=False)


def load_run_config(path):
    """Read a run's resolved config.yaml back (its `kind` key picks the class)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return load_config(data, kind=data.get("kind", "pref"))
