"""The fields every run shares (`TrainConfig`), the sft and rm configs built on it, and the keys a resumed
run may change."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from isdaa.config.checks import _check, _check_choices, _one_of, one_of
from isdaa.config.data import DataConfig
from isdaa.config.live_eval import LiveEvalConfig
from isdaa.config.model import ModelConfig
from isdaa.config.optim import OptimConfig


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
    push_to_hub: bool = False          # upload the final model (weights, tokenizer, card, trainer_state.json)
                                       # at the end
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


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning: NLL on completion tokens only, averaged over the global batch's tokens."""

    kind: ClassVar[str] = "sft"        # `isdaa train sft`; the `kind` key of a run's config.yaml


@dataclass
class RMConfig(TrainConfig):
    """Bradley-Terry reward model (Eq. 2) on a one-label sequence classifier."""

    kind: ClassVar[str] = "rm"

    def __post_init__(self):
        _check(self.eval is None, "the eval block (live generation eval) is for sft and pref runs, not rm")
        super().__post_init__()


# Keys that change how a run reports or where it lives, not what it computes: a resumed run may change them
# (any other difference from the run's config.yaml refuses the resume).
RUNTIME_KEYS = {"progress", "report_to", "num_threads", "logging_steps", "run_name", "eval_batch_size",
                "push_to_hub", "hub_model_id", "hub_private", "eval", "resume_from_checkpoint", "save_total_limit",
                "output_dir", "log_update_norm"}
