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


def one_of(*choices, default: str | None = None):
    """A string field that takes one of `choices` (default: the first; or one function returning them),
    checked at construction by `_check_choices`. YAML 1.1 reads unquoted yes/no/on/off/true/false as
    booleans: `from_dict` reads such a boolean back as the one choice it spells (`check_logps: off`)."""
    lazy = len(choices) == 1 and callable(choices[0])
    return field(default=default if lazy else default or choices[0],
                 metadata={"choices": choices[0] if lazy else choices})


def choices_of(f: dataclasses.Field) -> tuple | None:
    """The choices of a `one_of` field, else None."""
    c = f.metadata.get("choices")
    return tuple(c()) if callable(c) else c


def _check_choices(obj, prefix: str = "") -> None:
    for f in dataclasses.fields(obj):
        if (c := choices_of(f)) is not None:
            _one_of(getattr(obj, f.name), c, prefix + f.name)


YAML_TRUE, YAML_FALSE = ("true", "yes", "on"), ("false", "no", "off")  # YAML 1.1's boolean words


def _yaml_word(value: bool, choices: tuple, where: str) -> str:
    """The choice a YAML 1.1 boolean spells (`off` -> False -> "off"); refused when none or several do."""
    spelled = [c for c in choices if str(c).lower() in (YAML_TRUE if value else YAML_FALSE)]
    if len(spelled) != 1:
        raise ValueError(f"config key {where!r} must be one of {list(choices)}, got {value!r}: YAML reads unquoted "
                         "yes/no/on/off/true/false as a boolean; write the value in quotes")
    return spelled[0]


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
    sft_source: str = one_of("auto", "completion", "messages", "chosen")  # sft only: auto | completion | messages | chosen
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
        _check_choices(self, "data.")
        _check(self.num_proc is None or self.num_proc > 0, "data.num_proc must be > 0")
        from isdaa.data.files import one_split

        _check(not (self.eval == self.train and self.eval_split != self.train_split and one_split(self.train)),
               f"data.eval is the training file {self.train}: a local file has one split, so eval_split "
               f"{self.eval_split!r} would read the training rows; to evaluate on them set data.eval_split: "
               f"{self.train_split} (TRL: dataset_test_split; said at the start), or give an evaluation file "
               "(data.eval, or a dataset folder with train and test files)")


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


@dataclass
class LiveEvalConfig:
    """Live over-optimization eval every `every` steps (isdaa.evaluate.live): KL(pi_theta || pi_ref) from
    T=1 samples, golden win rate against the chosen responses when `reward` is set, eval/* metrics."""

    reward: str | None = None          # reward-model folder or `module:function`; None: KL only
    prompts: str | None = None         # dataset with `prompt` (and `chosen`); default: data.eval (the training data only when named here)
    split: str = "test"                # split of a hub `prompts` dataset
    every: int = 50                    # evaluate every N optimizer steps (and at the last step)
    n_prompts: int = 64                # the first N prompts, the same at every evaluation
    n: int = 2                         # samples per prompt for the win rate
    temperature: float = 0.7           # win-rate sampling (paper Appendix D); KL samples use T=1
    top_p: float = 0.95                # nucleus sampling for the win rate
    max_new_tokens: int = 128          # response length cap when sampling
    kl_samples: int = 1                # T=1 samples per prompt for the KL estimate
    kl_estimator: str = one_of("k1", "k3")  # k1 | k3: which one sqrt_kl and kl_budget use
    kl_budget: float | None = None     # stop the run once sqrt(KL) exceeds it
    batch_size: int = 64               # sampling batch
    at_start: bool = False             # also evaluate after step 1
    log_generations: int = 4           # rows of the generations table per eval (0: none)

    def __post_init__(self):
        for name in ("every", "n_prompts", "n", "max_new_tokens", "kl_samples", "batch_size"):
            _check(getattr(self, name) > 0, f"eval.{name} must be > 0")
        _check(self.temperature >= 0 and 0 < self.top_p <= 1, "eval.temperature must be >= 0, eval.top_p in (0, 1]")
        _check_choices(self, "eval.")
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
    mixed_precision: str = one_of("auto", "no", "bf16", "fp16")  # auto (bf16 where the GPU has it) | no | bf16 | fp16
    logging_steps: int = 10            # write a metrics.jsonl record every N steps
    eval_steps: int | None = None   # evaluate on data.eval every N steps (and at the end)
    eval_batch_size: int | None = None  # eval / reference precompute batch (default: 2 x micro_batch_size)
    save_steps: int | None = None      # checkpoint every N steps
    save_fractions: list = field(default_factory=list)  # e.g. [0.02, 0.05, 0.1] of total steps
    save_examples: list = field(default_factory=list)   # example counts (global) to checkpoint at
    save_initial: bool = False         # checkpoint-0 = the initial policy
    save_resume_state: bool = True     # optimizer/scheduler/RNG in checkpoints (resumable)
    resume_state_keep: int | None = None  # only the latest N checkpoints keep their resume state (None: all, as TRL)
    save_total_limit: int | None = None  # keep the latest N checkpoint-* folders, delete older ones (TRL's); None: all
    resume_from_checkpoint: Any = None  # true: continue from the latest checkpoint in output_dir (= --resume); a
                                        # checkpoint folder: continue from it (TRL's key)
    progress: bool = True              # tqdm bar (the lab's workers turn it off)
    report_to: list = field(default_factory=list)  # accelerate trackers (tensorboard, wandb, mlflow, ...), all, none
    push_to_hub: bool = False          # upload the final model (weights, tokenizer, card, trainer_state.json) at the end
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
    log_update_norm: bool = False      # log update_norm = ||theta_after - theta_before|| per step (one copy of
                                       # the trainable parameters; not with FSDP / DeepSpeed)

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
        _check(self.resume_state_keep is None or self.resume_state_keep >= 1, "resume_state_keep must be >= 1")
        _check(self.save_total_limit is None or self.save_total_limit >= 1, "save_total_limit must be >= 1")
        if self.resume_from_checkpoint in (False, "false", "False", ""):
            self.resume_from_checkpoint = None
        _check(self.resume_from_checkpoint in (None, True) or isinstance(self.resume_from_checkpoint, str),
               f"resume_from_checkpoint must be true or a checkpoint folder, got {self.resume_from_checkpoint!r}")
        _check(self.max_nonfinite_steps >= 1, "max_nonfinite_steps must be >= 1")
        _check(isinstance(self.response_only_head, bool), "response_only_head must be true or false")
        _check(isinstance(self.compile, bool), "compile must be true or false")
        _check(isinstance(self.log_update_norm, bool), "log_update_norm must be true or false")
        _check_choices(self)
        self.report_to = _tracker_names(self.report_to)
        _check(self.eval is None or self.eval.prompts or self.data.eval,
               "eval: no evaluation prompts: set eval.prompts (held-out prompts) or data.eval; to measure on the "
               "training prompts, set eval.prompts to the training data (it is then said at the start)")

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
        _check(self.eval is None, "the eval block (live generation eval) is for sft and pref runs, not rm")
        super().__post_init__()


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


def _train_signals() -> tuple:
    from isdaa.drift import TRAIN_SIGNALS

    return tuple(TRAIN_SIGNALS)


@dataclass
class DriftStopConfig:
    """`stop_on_drift`: a golden-free over-optimization alarm on a training-batch signal (isdaa.drift;
    the callback is isdaa.train.drift_stop). The smoothed signal is the mean of the last `smoothing`
    checks; the alarm fires after `patience` checks in a row beyond `threshold`."""

    signal: str = one_of(_train_signals, default="drift/log_ratio_mean")  # drift/log_ratio_mean | drift/ratio_mean | is/ess | is/clip_frac
    threshold: float = -2.0            # alarm below it (above it for is/clip_frac); the signal's units
    smoothing: int = 10                # trailing mean over this many checks (1: the raw value)
    patience: int = 1                  # consecutive checks beyond the threshold before the alarm
    action: str = one_of("stop", "keep-best")  # stop | keep-best (save best_by_drift/ at the alarm, train on)
    every: int | None = None           # check every N steps; default logging_steps

    def __post_init__(self):
        from isdaa.drift import check_threshold

        _check_choices(self, "stop_on_drift.")
        check_threshold(self.signal, self.threshold, "stop_on_drift.threshold")
        _check(self.smoothing >= 1 and self.patience >= 1, "stop_on_drift.smoothing and patience must be >= 1")
        _check(self.every is None or self.every >= 1, "stop_on_drift.every must be >= 1")


@dataclass
class RefSyncConfig:
    """TR-DPO (Gorbatovski et al. 2024): after every `steps`-th optimizer step the reference moves toward the
    policy, ref <- alpha * policy + (1 - alpha) * ref (isdaa.train.ref_sync; TRL: sync_ref_model)."""

    alpha: float = 0.6                 # the policy's share of the mix (TRL ref_model_mixup_alpha); 1: a hard copy
    steps: int = 512                   # update every N optimizer steps (TRL ref_model_sync_steps)

    def __post_init__(self):
        _check(math.isfinite(self.alpha) and 0 < self.alpha <= 1, f"ref_sync.alpha must be in (0, 1], got {self.alpha}")
        _check(self.steps >= 1, f"ref_sync.steps must be >= 1, got {self.steps}")


@dataclass
class PrefConfig(TrainConfig):
    """Preference training with any method of the registry (dpo ... is-rdpo)."""

    method: str = one_of(lambda: tuple(METHODS), default="dpo")  # dpo ipo rpo chipo rdpo, or is-<any> (losses.METHODS)
    beta: float = 0.1                  # KL strength of every method
    loss: LossOptions = field(default_factory=LossOptions)  # method options (METHOD.md)
    ref_model: str | None = None    # default: the initial policy (model.name_or_path)
    ref_logps: str = one_of("precompute", "on_the_fly")  # precompute (one pass, cached) | on_the_fly (ref model in memory)
    ref_cache_dir: str | None = None  # default: $ISDAA_CACHE or ~/.cache/isdaa/ref_logps
    disable_dropout: bool = True       # dropout off in policy and reference (TRL's default): at step 1
                                       # pi_theta = pi_ref = pi_b exactly; false keeps the model's dropout
    check_logps: str = one_of("error", "recompute", "off")  # stored ref_* / behavior log-probs vs the initial models on the
                                       # trainer's ids, before training: error | recompute | off
    check_logps_rows: int = 32         # rows sampled for that check
    stop_on_drift: DriftStopConfig | None = None  # golden-free alarm: stop or keep best_by_drift/
    ref_sync: RefSyncConfig | None = None  # TR-DPO: the reference soft-updated toward the policy every
                                       # ref_sync.steps steps (needs ref_logps: on_the_fly; not with LoRA)
    pack_pairs: bool = True  # one row [prompt, chosen, rejected] per pair, the prompt once (same values), where
    #                          the model takes a 4D mask (sdpa, eager); on an H200 in bf16 1.19-1.24x faster at 200M
    #                          with 0.83x the GPU memory, 0.97x at 40M (benchmarks/README.md); false: one row each
    head_chunk_mb: float = 256.0  # LM head: beyond this many MiB of response logits, the head runs in chunks of
    #                              rows of this size, recomputed in the backward (isdaa.chunked_head); 0: never

    def __post_init__(self):
        super().__post_init__()
        _check(math.isfinite(self.beta) and self.beta > 0, f"beta must be > 0 and finite, got {self.beta}")
        _check_choices(self)
        _check_method_options(self)
        _check(self.check_logps_rows > 0, "check_logps_rows must be > 0")
        _check(isinstance(self.head_chunk_mb, (int, float)) and not isinstance(self.head_chunk_mb, bool)
               and math.isfinite(self.head_chunk_mb) and self.head_chunk_mb >= 0,
               f"head_chunk_mb must be a number >= 0 (0: never chunk the LM head), got {self.head_chunk_mb!r}")
        _check_ref_sync(self)


def _check_method_options(cfg: PrefConfig) -> None:
    """The method's refused option combinations (`Method.check_options`), and a loss that must see the whole
    optimizer step's batch at once (`Method.whole_batch`: dpo-sft's token mean, an IS control) with a split
    batch; the process count is checked at launch (`PrefTask.build`)."""
    entry, options = METHODS[cfg.method], dataclasses.asdict(cfg.loss)
    try:
        entry.check_options(options)
    except ValueError as err:
        raise ValueError(f"loss: {err}") from None
    _check(not entry.whole_batch(options) or cfg.micro_batch_size == cfg.batch_size,
           f"method {cfg.method!r}" + (f" with loss.is_control={cfg.loss.is_control!r}" if entry.importance_weighted
                                       else "") + " computes its loss over the whole optimizer step's batch: set "
           f"micro_batch_size = batch_size (now {cfg.micro_batch_size} < {cfg.batch_size}) and run one process"
           + ("" if entry.importance_weighted else "; rpo with loss.rpo_nll_mean: true (per-sequence token means) "
              "splits freely"))


def _check_ref_sync(cfg: PrefConfig) -> None:
    """TR-DPO needs a reference model of its own in memory: its log-probs cannot be precomputed once, a LoRA
    policy's reference (the adapter disabled) cannot move, and a reference-free method has none."""
    if cfg.ref_sync is None:
        return
    _check(cfg.ref_logps == "on_the_fly", "ref_sync (TR-DPO) moves the reference every ref_sync.steps steps, so its "
           "log-probs cannot be precomputed once: set ref_logps: on_the_fly (the reference model stays in memory)")
    _check(cfg.model.lora is None, "ref_sync (TR-DPO) with LoRA: the reference is the policy with its adapter "
           "disabled, so there is no separate reference to update (TRL refuses it too); train without LoRA")
    _check(METHODS[cfg.method].needs_reference, f"ref_sync (TR-DPO) updates the reference, but method "
           f"{cfg.method!r} is reference-free")


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


# Keys that change how a run reports or where it lives, not what it computes: a resumed run may change them
# (any other difference from the run's config.yaml refuses the resume).
RUNTIME_KEYS = {"progress", "report_to", "num_threads", "logging_steps", "run_name", "eval_batch_size",
                "push_to_hub", "hub_model_id", "hub_private", "eval", "resume_from_checkpoint", "save_total_limit",
                "output_dir", "log_update_norm"}


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"unknown config key {where + key!r}{_nearest(key, fields)}")
        if isinstance(value, bool) and (choices := choices_of(fields[key])) is not None:
            value = _yaml_word(value, choices, where + key)  # `check_logps: off` read by YAML 1.1 as False
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
    """Config of `kind` (sft | rm | pref) from a YAML path or dict, then `key=value` overrides (the
    command line). Both go through one translation (`trl_compat.translate`); every problem is reported
    at once, each naming where its key came from (the file or the command line)."""
    _one_of(kind, tuple(CONFIG_CLASSES), "kind")
    origin = str(source) if isinstance(source, (str, Path)) else None
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
    sources = [(data, origin), (parse_overrides(overrides), trl_compat.COMMAND_LINE)]
    data, problems, tree = trl_compat.translate(sources, cls)  # TRL key names -> isdaa's (trl_compat.py)
    declared = data.pop("kind", kind)
    _check(declared == kind, f"this config is for `isdaa train {declared}`, not `{kind}`")
    problems += trl_compat.unknown_keys(cls, data, origin=tree.origin)
    if problems:  # every unknown / unsupported key at once
        raise ValueError(problems[0] if len(problems) == 1 else
                         f"{len(problems)} config problems:\n  - " + "\n  - ".join(problems))
    try:
        return from_dict(cls, data)
    except ValueError as err:  # a bad value: name where it came from
        raise ValueError(_attributed(str(err), tree)) from None


def _attributed(message: str, tree) -> str:
    """`message` headed by the origin of the config keys it names, when they all come from one place."""
    import re

    named = [k for k in tree.rank if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w])", message)]
    origins = {tree.origin(k) for k in named}
    return f"{origins.pop()}: {message}" if len(origins) == 1 and None not in origins else message


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump({"kind": cfg.kind, **to_dict(cfg)}, sort_keys=False)


def load_run_config(path):
    """Read a run's resolved config.yaml back (its `kind` key picks the class)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return load_config(data, kind=data.get("kind", "pref"))
