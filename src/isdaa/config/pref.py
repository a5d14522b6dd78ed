"""`isdaa train pref`: the method and its loss options (derived from the registry), the reference, the
drift alarm (`stop_on_drift:`) and TR-DPO's reference sync (`ref_sync:`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

from isdaa.config.checks import _check, _check_choices, one_of
from isdaa.config.train import TrainConfig
from isdaa.losses import METHODS, OPTIONS


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

    signal: str = one_of(_train_signals, default="drift/log_ratio_mean")  # drift/log_ratio_mean |
                                       # drift/ratio_mean | is/ess | is/clip_frac
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

    kind: ClassVar[str] = "pref"
    method: str = one_of(lambda: tuple(METHODS), default="dpo")  # dpo ipo rpo chipo rdpo, or is-<any> (losses.METHODS)
    beta: float = 0.1                  # KL strength of every method
    loss: LossOptions = field(default_factory=LossOptions)  # method options (METHOD.md)
    ref_model: str | None = None    # default: the initial policy (model.name_or_path)
    ref_logps: str = one_of("precompute", "on_the_fly")  # precompute (one pass, cached) | on_the_fly (ref
                                       # model in memory)
    ref_cache_dir: str | None = None  # default: $ISDAA_CACHE or ~/.cache/isdaa/ref_logps
    disable_dropout: bool = True       # dropout off in policy and reference (TRL's default): at step 1
                                       # pi_theta = pi_ref = pi_b exactly; false keeps the model's dropout
    check_logps: str = one_of("error", "recompute", "off")  # stored ref_* / behavior log-probs vs the
                                       # initial models on the trainer's ids, before training: error |
                                       # recompute | off
    check_logps_rows: int = 32         # rows sampled for that check
    stop_on_drift: DriftStopConfig | None = None  # golden-free alarm: stop or keep best_by_drift/
    ref_sync: RefSyncConfig | None = None  # TR-DPO: the reference soft-updated toward the policy every
                                       # ref_sync.steps steps (needs ref_logps: on_the_fly; not with LoRA)
    pack_pairs: bool = True  # one row [prompt, chosen, rejected] per pair, the prompt once (same values), where
    #                          the model takes a 4D mask (sdpa, eager); speed and memory: see benchmarks/README.md;
    #                          false: one row each
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
