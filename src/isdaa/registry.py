"""The one registry: every loss option (`OPTIONS`) and every method (`METHODS`), declared once.

`OPTIONS` holds each loss option (name, default, check, help text; `config.LossOptions` and the CLI derive
from it). `METHODS` maps every config name to a `Method` entry that answers every question about the method:
its base loss and options, its family, what it reads (lengths, reference, behavior log-probs, WPO's sums),
whether its batch may be split, its report order and its TRL `loss_type`. `is-<name>` is derived for every
base method. Callers ask the entry instead of branching on names.

A new DAA = one function in `isdaa.base_losses`, one `Method` entry in `_BASE`, one test (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch

from isdaa import importance
from isdaa.base_losses import chipo, dpo, dpo_norm, dpo_sft, ipo, rdpo, rpo, simpo

Tensor = torch.Tensor

# --------------------------------------------------------------------------------------------------
# Registry: options, then methods


@dataclass(frozen=True)
class Option:
    """One loss option, declared once: config key `loss.<name>`, keyword of `preference_loss`.

    kind     float, bool or str; a float option with `nullable` also takes None ("off")
    minimum  float options: the value must be >= minimum (> with `exclusive`), and finite
    choices  str options: the values allowed
    """

    name: str
    default: object
    doc: str
    kind: type = float
    minimum: float | None = None
    exclusive: bool = False
    nullable: bool = False
    choices: tuple[str, ...] = ()

    def check(self, value) -> None:
        """Raise TypeError (not a bool for a flag) or ValueError (out of range) naming the option."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise TypeError(f"{self.name} must be True or False, got {value!r}")
            return
        if self.kind is str:
            if value not in self.choices:
                raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}")
            return
        if value is None and self.nullable:
            return
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self.minimum is not None:
            ok = value > self.minimum if self.exclusive else value >= self.minimum
        if not ok:
            bound = "" if self.minimum is None else f" {'>' if self.exclusive else '>='} {self.minimum:g}"
            none = " (or null)" if self.nullable else ""
            raise ValueError(f"{self.name} must be a finite number{bound}{none}, got {value!r}")

    @property
    def annotation(self) -> type:
        """The config field's type (`config.LossOptions`)."""
        if self.kind in (bool, str):
            return self.kind
        return float | None if self.nullable else float


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("is_clip", 1.0, "eps: IS log-weights clipped from above at 2*eps (the release's default)",
           minimum=0, exclusive=True),
    Option("is_self_normalize", False, "IS weights divided by their mean over the batch (in training: the whole "
           "optimizer step, every micro-batch and process; beyond the paper)", bool),
    Option("is_length_normalize", False, "IS log-ratio from per-token means (beyond the paper; needs lengths)",
           bool),
    Option("ipo_length_normalize", False, "IPO on per-token mean log-ratios (TRL's choice)", bool),
    Option("rpo_eta", 0.005, "RPO: weight of the chosen response's NLL (the release's default)", minimum=0),
    Option("rpo_nll_mean", False, "RPO: per-token mean NLL instead of the sum (TRL/OpenRLHF)", bool),
    Option("chipo_rmax", None, "chi-PO: logit clipped to [-2R, 2R]; null: no clip", minimum=0, exclusive=True,
           nullable=True),
    Option("rdpo_alpha", 0.01, "R-DPO: length-gap coefficient alpha (the release's default)", minimum=0),
    Option("simpo_gamma", 0.5, "SimPO: target reward margin gamma (TRL's default)", minimum=0),
    Option("dpo_sft_weight", 1.0, "dpo-sft: weight of the SFT term, the chosen NLL averaged over the batch's "
           "chosen tokens (TRL loss_weights [1, weight])", minimum=0),
    Option("wpo_weighting", False, "WPO (TRL use_weighting): each pair weighted by the policy's detached, "
           "length-normalized probability of both responses; base methods only (not is-*)", bool),
    Option("wpo_max_weight", 1.0, "WPO: weights clamped at this maximum (TRL < 1.0: 1); null: no clamp (TRL 1.x)",
           minimum=0, exclusive=True, nullable=True),
    Option("is_control", "none", "is-* controls, over the whole batch: none | permute (the weights shuffled "
           "among the pairs) | mean (every pair the batch's mean weight) | matched_random (log-normal weights "
           "with the batch's ESS, mean 1); needs the batch unsplit", str, choices=importance.CONTROLS),
)}
OPTION_DEFAULTS: dict[str, object] = {name: o.default for name, o in OPTIONS.items()}
IS_OPTIONS = tuple(name for name in OPTIONS if name.startswith("is_"))  # read by every is-* method
WPO_OPTIONS = ("wpo_weighting", "wpo_max_weight")  # read by every base method

# Why is-<name> refuses WPO (docs/METHOD.md): E_{pi_b}[w_IS f] = E_{pi_theta}[f] is already the on-policy
# objective; WPO's weight is a length-normalized proxy of the same pi_theta(y_c) pi_theta(y_r) factor without
# pi_b, so the product w_IS * w_WPO would weight on-policy pairs by pi_theta once more: the objective of a
# sharpened policy, neither IS-DAA's nor WPO's.
WPO_WITH_IS = ("wpo_weighting cannot be combined with an importance-weighted method (is-*): the IS weight "
               "pi_theta/pi_b already turns the loss into its on-policy expectation, and WPO's weight (a proxy "
               "of pi_theta(y) without pi_b) would count pi_theta twice. Use the base method with wpo_weighting, "
               "or the is-* method alone")


@dataclass(frozen=True)
class Lengths:
    """Which response lengths (token counts, EOS included) a loss reads, and when they are required.

    args  keywords of the loss function: `chosen_lengths` / `rejected_lengths`
    when  "always", or the boolean options of which any, when true, makes them required ("never": none)
    """

    args: tuple[str, ...] = ()
    when: str | tuple[str, ...] = "never"

    def required(self, options: Mapping[str, object]) -> bool:
        if self.when in ("always", "never"):
            return self.when == "always"
        return any(bool(options.get(o, OPTION_DEFAULTS[o])) for o in self.when)


BOTH = ("chosen_lengths", "rejected_lengths")


@dataclass(frozen=True)
class Method:
    """What a method is and what it needs. Fields:

    name             config name (`dpo`, `is-dpo`, ...)
    loss_fn          base loss: keyword (B,) log-prob tensors + beta + option keywords -> (B,) losses
    family           the shape of the loss of a margin (the paper's Eq. 6 f): "logistic" (-log sigmoid)
                     or "squared" (IPO)
    option_args      option name -> keyword of loss_fn it sets (e.g. rpo_eta -> eta)
    lengths          the response lengths loss_fn reads and when they are required (`Lengths`)
    needs_reference  loss_fn reads ref_chosen_logps / ref_rejected_logps (False: reference-free, the
                     trainer runs no reference pass unless an IS variant needs pi_b = pi_ref)
    couples_batch    a pair's loss depends on the other pairs of its batch (dpo-sft's token mean): the
                     trainer must put the whole optimizer step through one loss call (`whole_batch`)
    trl_loss_type    TRL 1.x's `loss_type` list for this loss (sorted), or () when TRL has none
    trl_options      options TRL's form implies (TRL's ipo is length-normalized)
    trl_weights      TRL loss type whose `loss_weights` entry becomes an option (dpo-sft: sft -> dpo_sft_weight)
    importance_weighted  w * loss with detached IS weights from behavior log-probs (pi_b)
    """

    name: str
    loss_fn: Callable[..., Tensor]
    family: str = "logistic"
    option_args: Mapping[str, str] = field(default_factory=dict)
    lengths: Lengths = Lengths()
    needs_reference: bool = True
    couples_batch: bool = False
    trl_loss_type: tuple[str, ...] = ()
    trl_options: Mapping[str, object] = field(default_factory=dict)
    trl_weights: Mapping[str, str] = field(default_factory=dict)
    importance_weighted: bool = False

    @property
    def base(self) -> str:
        """The base method's config name: `dpo` for both `dpo` and `is-dpo`."""
        return self.name.removeprefix("is-") if self.importance_weighted else self.name

    @property
    def order(self) -> int:
        """Position of the base method in the registry: the order (and colour) reports and figures use."""
        return [m.name for m in _BASE].index(self.base)

    @property
    def uses_behavior_logps(self) -> bool:
        """True when behavior log-probs (pi_b) enter the loss; without them pi_b = pi_ref."""
        return self.importance_weighted

    @property
    def options(self) -> tuple[str, ...]:
        """The options this method reads (others are accepted and ignored)."""
        return tuple(self.option_args) + (IS_OPTIONS if self.importance_weighted else WPO_OPTIONS)

    def requires_lengths(self, options: Mapping[str, object] | None = None) -> bool:
        """Whether response lengths must be given, with these options (the loss's own, IS's length-normalized
        ratio, WPO's per-token means)."""
        options = options or {}
        weight_flag = "is_length_normalize" if self.importance_weighted else "wpo_weighting"
        return self.lengths.required(options) or bool(options.get(weight_flag, OPTION_DEFAULTS[weight_flag]))

    def requires_sq_logsumexp(self, options: Mapping[str, object] | None = None) -> bool:
        """Whether the policy's per-response sums of logsumexp_v(2 log p(v)) must be given (WPO's weights):
        the trainer then asks `isdaa.logprobs` for them (`with_sq_logsumexp`)."""
        return not self.importance_weighted and bool((options or {}).get("wpo_weighting", False))

    def whole_batch(self, options: Mapping[str, object] | None = None) -> bool:
        """Whether the loss must see the optimizer step's whole batch at once (its value depends on how a
        batch is split): a batch-coupled loss, or an IS control (over the batch's weights)."""
        control = (options or {}).get("is_control", "none")
        return self.couples_batch or (self.importance_weighted and control != "none")

    def check_options(self, options: Mapping[str, object]) -> None:
        """Option combinations this method refuses (ValueError): WPO on an is-* method, an IS control
        on a method without IS weights."""
        if self.importance_weighted and options.get("wpo_weighting", False):
            raise ValueError(f"method {self.name!r}: {WPO_WITH_IS}")
        if not self.importance_weighted and options.get("is_control", "none") != "none":
            raise ValueError(f"is_control={options['is_control']!r} controls IS weights: it needs an is-* method, "
                             f"not {self.name!r}")

    def requires_reference(self, has_behavior_logps: bool) -> bool:
        """Whether reference log-probs must be computed: the loss reads them, or an IS method has no
        behavior log-probs and falls back to pi_b = pi_ref."""
        return self.needs_reference or (self.uses_behavior_logps and not has_behavior_logps)

    def base_losses(self, beta, options: Mapping[str, object], logps: Mapping[str, Tensor]) -> Tensor:
        """loss_fn on `logps` (policy_/ref_ chosen/rejected, chosen_/rejected_lengths by name), with
        its options taken from `options` (defaults for those absent). (B,) unweighted losses."""
        keys = ("policy_chosen_logps", "policy_rejected_logps") + (
            ("ref_chosen_logps", "ref_rejected_logps") if self.needs_reference else ())
        kwargs = {k: logps[k] for k in keys + self.lengths.args}
        kwargs.update({arg: options.get(opt, OPTION_DEFAULTS[opt]) for opt, arg in self.option_args.items()})
        return self.loss_fn(beta=beta, **kwargs)


_BASE = (
    Method("dpo", dpo, trl_loss_type=("sigmoid",)),
    Method("ipo", ipo, "squared", {"ipo_length_normalize": "length_normalize"},
           Lengths(BOTH, ("ipo_length_normalize",)), trl_loss_type=("ipo",),
           trl_options={"ipo_length_normalize": True}),  # TRL's ipo divides each log-ratio by its length
    Method("rpo", rpo, option_args={"rpo_eta": "eta", "rpo_nll_mean": "nll_mean"},
           lengths=Lengths(("chosen_lengths",), ("rpo_nll_mean",))),
    Method("chipo", chipo, option_args={"chipo_rmax": "rmax"}),
    Method("rdpo", rdpo, option_args={"rdpo_alpha": "alpha"}, lengths=Lengths(BOTH, "always")),
    Method("simpo", simpo, option_args={"simpo_gamma": "gamma"}, lengths=Lengths(BOTH, "always"),
           needs_reference=False),
    Method("dpo-norm", dpo_norm, lengths=Lengths(BOTH, "always"), trl_loss_type=("sigmoid_norm",)),
    Method("dpo-sft", dpo_sft, option_args={"dpo_sft_weight": "weight"}, lengths=Lengths(("chosen_lengths",), "always"),
           couples_batch=True, trl_loss_type=("sft", "sigmoid"), trl_weights={"sft": "dpo_sft_weight"}),
)

METHODS: dict[str, Method] = {m.name: m for m in _BASE}
METHODS.update({f"is-{m.name}": replace(m, name=f"is-{m.name}", importance_weighted=True) for m in _BASE})
BASE_METHODS: tuple[str, ...] = tuple(m.name for m in _BASE)  # in registry order


def methods_help() -> str:
    """One line per method family for --help texts: the base names and their is-* variants."""
    names = (m.name + ("" if m.needs_reference else " (reference-free)") for m in _BASE)
    return ", ".join(names) + "; and is-<name> for each (importance-weighted)"


__all__ = ["BASE_METHODS", "IS_OPTIONS", "METHODS", "OPTIONS", "OPTION_DEFAULTS", "Lengths", "Method", "Option",
           "methods_help"]
