"""Preference losses (DPO, IPO, RPO, chi-PO, R-DPO, SimPO, length-normalized DPO, DPO + SFT), their IS-DAA
variants, WPO weighting, and the one registry.

Everything here is a pure function of per-pair `(B,)` tensors of SUMMED response log-probs
(docs/METHOD.md's notation), response lengths where a method needs them, and scalar
hyperparameters. No model, tokenizer or config object enters. Notation:

    u_c = logp_theta(chosen) - logp_ref(chosen)       u_r likewise       h = u_c - u_r

Base losses return UNREDUCED per-pair losses `(B,)`. An importance-sampled method `is-<name>` is
composition: `w * <name>` with detached weights from `isdaa.importance` (Section 3.1); so is the loss
option `wpo_weighting` of every base method (WPO's weights, Zhou et al. 2024), and `is_control` swaps an
IS method's weights for a control (permuted, batch mean, ESS-matched random).

The registry owns everything a method is: `OPTIONS` holds each loss option once (name, default,
check, help text; `config.LossOptions` and the CLI derive from it) and `METHODS` maps every config
name to a `Method` entry declaring what it reads (options, lengths, reference and behavior
log-probs). Callers ask the entry instead of branching on names. The front door `preference_loss`
validates inputs, computes in float32 whatever the input dtype, and returns the mean loss, per-pair
losses, weights and metrics (0-dim detached tensors: no host sync per metric).

A new DAA = one function below, one `Method` entry in `_BASE`, one test (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from isdaa import importance
from isdaa.importance import safe_lengths

__all__ = ["METHODS", "OPTIONS", "Method", "Option", "PreferenceLossOutput", "preference_loss"]

Tensor = torch.Tensor

# chi-PO exponentiates log-ratios; u is clamped from above at this bound before exp. e^40 ~ 2.4e17, so
# beta * e^u stays far below float32's max (3.4e38) for any sensible beta, while the sigmoid is already
# saturated there (for beta >= 1e-15, beta*e^40 > 2e2). Beyond the bound the exp term has zero gradient;
# the log term (u_c - u_r) keeps its gradient. No bound from below: e^u underflows to 0 harmlessly.
CHIPO_MAX_LOG_RATIO = 40.0


# --------------------------------------------------------------------------------------------------
# Base losses: (B,) in, (B,) out. Option values have no defaults here: OPTIONS holds them.


def _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """u_c, u_r: the log-ratios log pi_theta/pi_ref of the chosen and rejected responses, (B,) each."""
    return policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps


def dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """DPO: -log sigmoid(beta * h). Paper Eq. 6 with f(x) = -log sigmoid(x) (Rafailov et al. 2023)."""
    u_c, u_r = _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * (u_c - u_r))  # (B,)


def ipo(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
    *, length_normalize, chosen_lengths=None, rejected_lengths=None,
):
    """IPO: (h - 1/(2 beta))^2 (Azar et al. 2024, Eq. 17; paper Eq. 6 with f(x) = (x-1)^2 rescaled).

    Summed log-probs (paper, release) unless `length_normalize`, which divides u_c by |chosen| and u_r
    by |rejected| first (TRL's choice); it needs both lengths.
    """
    u_c, u_r = _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if length_normalize:
        u_c, u_r = u_c / safe_lengths(chosen_lengths), u_r / safe_lengths(rejected_lengths)
    return (u_c - u_r - 1.0 / (2.0 * beta)) ** 2


def rpo(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
    *, eta, nll_mean, chosen_lengths=None,
):
    """RPO, the authors' release's form: -log sigmoid(beta h) - beta * eta * logp_theta(chosen).

    The NLL of the chosen response is summed over tokens; `nll_mean` uses the per-token mean instead
    (TRL/OpenRLHF style), which needs `chosen_lengths`.
    """
    nll = -policy_chosen_logps
    if nll_mean:
        nll = nll / safe_lengths(chosen_lengths)
    return dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) + (
        beta * eta * nll
    )


def chipo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, *, rmax):
    """chi-PO (Huang et al. 2024): -log sigmoid(clip_[-2R, 2R](beta * [(e^u_c - e^u_r) + (u_c - u_r)])).

    The link phi(z) = z + log z applied to z = pi_theta/pi_ref. No official code exists; this follows
    the paper's formula. u is clamped from above at CHIPO_MAX_LOG_RATIO (40) inside exp only, for
    float32 stability. `rmax` = R; None means no clip.
    """
    u_c, u_r = _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    top = CHIPO_MAX_LOG_RATIO
    logits = beta * ((u_c.clamp(max=top).exp() - u_r.clamp(max=top).exp()) + (u_c - u_r))
    if rmax is not None:
        logits = logits.clamp(-2.0 * rmax, 2.0 * rmax)
    return -F.logsigmoid(logits)


def rdpo(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
    *, alpha, chosen_lengths, rejected_lengths,
):
    """R-DPO (Park et al. 2024, Eq. 9): -log sigmoid(beta h + alpha (|chosen| - |rejected|)).

    PLUS sign: a chosen response longer than the rejected one raises the logit, so that pair is
    already "won" by length and gives a smaller gradient: the model learns less from length.
    """
    u_c, u_r = _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    length_gap = chosen_lengths.to(u_c.dtype) - rejected_lengths.to(u_c.dtype)
    return -F.logsigmoid(beta * (u_c - u_r) + alpha * length_gap)


def simpo(policy_chosen_logps, policy_rejected_logps, beta, *, gamma, chosen_lengths, rejected_lengths):
    """SimPO (Meng et al. 2024, Eq. 6), reference-free: the implicit reward is the length-normalized
    log-prob beta/|y| logp_theta(y), with a target margin gamma:

        -log sigmoid(beta/|chosen| logp_theta(chosen) - beta/|rejected| logp_theta(rejected) - gamma)

    gamma is absolute (TRL's `simpo_gamma`; the authors' code sets gamma = beta * gamma_beta_ratio).
    """
    reward_c = beta * policy_chosen_logps / safe_lengths(chosen_lengths)
    reward_r = beta * policy_rejected_logps / safe_lengths(rejected_lengths)
    return -F.logsigmoid(reward_c - reward_r - gamma)


def dpo_norm(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
    *, chosen_lengths, rejected_lengths,
):
    """Length-normalized DPO (TRL's `loss_type: sigmoid_norm`): -log sigmoid(beta (u_c/|c| - u_r/|r|)),
    the log-ratios of paper Eq. 6 as per-token means (IPO's `length_normalize` rule on DPO's link)."""
    u_c, u_r = _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * (u_c / safe_lengths(chosen_lengths) - u_r / safe_lengths(rejected_lengths)))

def dpo_sft(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
    *, weight, chosen_lengths,
):
    """DPO + the SFT term as TRL 1.x defines it (`loss_type: [sigmoid, sft]`, `loss_weights: [1, weight]`:
    TRL's RPO). Its SFT term is the chosen tokens' NLL averaged over ALL chosen tokens of the batch:

        L = mean_b -log sigmoid(beta h_b) + weight * sum_b NLL_b / sum_b |c_b|,   NLL_b = -logp_theta(c_b)

    returned per pair as dpo_b + weight * NLL_b * B / sum_b' |c_b'| (their mean is L). The token mean
    couples the pairs of a batch, so the registry marks the method `couples_batch` and the trainer refuses
    to split its batch. `rpo` with `rpo_nll_mean` (a mean per sequence) equals it, with eta = weight / beta,
    only when every chosen response of the batch has the same length.
    """
    nll = -policy_chosen_logps
    per_pair_share = nll.numel() / safe_lengths(chosen_lengths).sum()     # B / (chosen tokens of the batch)
    return dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) + (
        weight * nll * per_pair_share
    )



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
class Method:
    """What a method is and what it needs. Fields:

    name             config name (`dpo`, `is-dpo`, ...)
    loss_fn          base loss: keyword (B,) log-prob tensors + beta + option keywords -> (B,) losses
    option_args      option name -> keyword of loss_fn it sets (e.g. rpo_eta -> eta)
    length_args      which of `chosen_lengths` / `rejected_lengths` loss_fn accepts
    needs_lengths    lengths are always required (R-DPO)
    length_options   boolean options that, when true, make both lengths required
    needs_reference  loss_fn reads ref_chosen_logps / ref_rejected_logps (False: reference-free, the
                     trainer runs no reference pass unless an IS variant needs pi_b = pi_ref)
    couples_batch    a pair's loss depends on the other pairs of its batch (dpo-sft's token mean): the
                     trainer must put the whole optimizer step through one loss call (`whole_batch`)
    importance_weighted  w * loss with detached IS weights from behavior log-probs (pi_b)
    """

    name: str
    loss_fn: Callable[..., Tensor]
    option_args: Mapping[str, str] = field(default_factory=dict)
    length_args: tuple[str, ...] = ()
    needs_lengths: bool = False
    length_options: tuple[str, ...] = ()
    needs_reference: bool = True
    couples_batch: bool = False
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
        """Whether response lengths must be given, with these options."""
        options = options or {}
        flags = self.length_options + (("is_length_normalize",) if self.importance_weighted else ("wpo_weighting",))
        return self.needs_lengths or any(bool(options.get(o, OPTION_DEFAULTS[o])) for o in flags)

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
        kwargs = {k: logps[k] for k in keys + self.length_args}
        kwargs.update({arg: options.get(opt, OPTION_DEFAULTS[opt]) for opt, arg in self.option_args.items()})
        return self.loss_fn(beta=beta, **kwargs)


_BASE = (
    Method("dpo", dpo),
    Method(
        "ipo", ipo, {"ipo_length_normalize": "length_normalize"},
        length_args=("chosen_lengths", "rejected_lengths"), length_options=("ipo_length_normalize",),
    ),
    Method(
        "rpo", rpo, {"rpo_eta": "eta", "rpo_nll_mean": "nll_mean"},
        length_args=("chosen_lengths",), length_options=("rpo_nll_mean",),
    ),
    Method("chipo", chipo, {"chipo_rmax": "rmax"}),
    Method(
        "rdpo", rdpo, {"rdpo_alpha": "alpha"},
        length_args=("chosen_lengths", "rejected_lengths"), needs_lengths=True,
    ),
    Method(
        "simpo", simpo, {"simpo_gamma": "gamma"},
        length_args=("chosen_lengths", "rejected_lengths"), needs_lengths=True, needs_reference=False,
    ),
    Method("dpo-norm", dpo_norm, length_args=("chosen_lengths", "rejected_lengths"), needs_lengths=True),
    Method(
        "dpo-sft", dpo_sft, {"dpo_sft_weight": "weight"},
        length_args=("chosen_lengths",), needs_lengths=True, couples_batch=True,
    ),
)

METHODS: dict[str, Method] = {m.name: m for m in _BASE}
METHODS.update({f"is-{m.name}": replace(m, name=f"is-{m.name}", importance_weighted=True) for m in _BASE})


def methods_help() -> str:
    """One line per method family for --help texts: the base names and their is-* variants."""
    names = (m.name + ("" if m.needs_reference else " (reference-free)") for m in _BASE)
    return ", ".join(names) + "; and is-<name> for each (importance-weighted)"


# --------------------------------------------------------------------------------------------------
# Front door


@dataclass
class PreferenceLossOutput:
    """loss: scalar mean of `losses`; losses: (B,) per-pair losses with weights applied; weights: (B,)
    detached, the weights applied: IS (or an is_control's), WPO's, or ones; metrics: name -> detached 0-dim
    float32 tensor (convert once per logging step with `metrics_float()`, so a GPU run does not sync the host
    per metric per step); log_weights: prefix -> (B,) detached log-weights behind that prefix's batch-level
    metrics (`is`: the IS weights, zeros without IS; `wpo`: WPO's; `drift`: the clipped weights every pair
    would get), so that a trainer splitting a batch recomputes `<prefix>/ess` and `<prefix>/top_share` over
    the whole batch (`importance.log_weight_sums`)."""

    loss: Tensor
    losses: Tensor
    weights: Tensor
    metrics: dict[str, Tensor]
    log_weights: dict[str, Tensor] = field(default_factory=dict)

    def metrics_float(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.items()}


def preference_loss(
    method: str,
    beta: float,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    *,
    behavior_chosen_logps: Tensor | None = None,
    behavior_rejected_logps: Tensor | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    policy_chosen_sq_lse: Tensor | None = None,
    policy_rejected_sq_lse: Tensor | None = None,
    generator: torch.Generator | None = None,
    **options,
) -> PreferenceLossOutput:
    """The loss of `method` (a key of METHODS) on a batch of (B,) summed log-probs, in float32 (float64
    when an input is float64).

    Options by name: the keys of OPTIONS (all accepted for every method; defaults there). Reference
    log-probs may be omitted for a reference-free method (its rewards/* metrics then use ref = 0).
    Behavior log-probs default to the reference's (pi_b = pi_ref). `policy_*_sq_lse` (B,): per response,
    the sum over its tokens of logsumexp_v(2 log p_theta(v)), needed by `wpo_weighting`
    (`isdaa.logprobs`' `with_sq_logsumexp`). `generator`: the random source of `is_control` permute /
    matched_random. Raises ValueError on an unknown method/option, a refused combination
    (`Method.check_options`), a missing required input, mismatched shapes, beta <= 0 or an option out of
    range (TypeError on a non-tensor or non-bool flag).
    """
    entry, opts = _lookup(method), validate_options(options)
    entry.check_options(opts)
    beta = _check_beta(beta)
    x = _inputs(entry, opts, policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
                behavior_chosen_logps=behavior_chosen_logps, behavior_rejected_logps=behavior_rejected_logps,
                chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
                policy_chosen_sq_lse=policy_chosen_sq_lse, policy_rejected_sq_lse=policy_rejected_sq_lse)
    base = entry.base_losses(beta, opts, x)  # (B,)
    behavior = (x["behavior_chosen_logps"], x["behavior_rejected_logps"])
    policy = (x["policy_chosen_logps"], x["policy_rejected_logps"])
    log_w, stats = _is_log_weights(entry, opts, x, generator)  # IS (or its control), None without IS
    wpo_log_w, wpo_metrics = _wpo_log_weights(entry, opts, x)   # WPO (never with IS: check_options)
    applied = log_w if log_w is not None else wpo_log_w
    weights = applied.exp() if applied is not None else torch.ones_like(base)
    losses = weights * base
    # unclipped joint log(pi_theta / pi_b), logged for every method that has a pi_b (Figure 6)
    drift = importance.log_ratios(*policy, *behavior) if behavior[0] is not None else None
    ref = (x["ref_chosen_logps"], x["ref_rejected_logps"]) if entry.needs_reference else (0.0, 0.0)
    metrics = {**_metrics(beta, *policy, *ref, stats, drift, opts["is_clip"]), **wpo_metrics}
    log_weights = {"is": log_w if log_w is not None else torch.zeros_like(base).detach()}
    if wpo_log_w is not None:
        log_weights["wpo"] = wpo_log_w
    if drift is not None:
        log_weights["drift"] = importance.clip_log_weights(drift, opts["is_clip"])
    return PreferenceLossOutput(loss=losses.mean(), losses=losses, weights=weights, metrics=metrics,
                                log_weights=log_weights)


def _is_log_weights(entry: Method, opts, x, generator) -> tuple[Tensor | None, dict[str, Tensor]]:
    """(detached IS log-weights (B,), or None for a method without them (w = 1); `importance.weight_stats` of
    those weights): an `is_control` replaces the IS weights (its stats then, but the IS clip's clip_frac)."""
    if not entry.importance_weighted:
        return None, importance.weight_stats(torch.zeros_like(x["policy_chosen_logps"]).detach(), None)
    log_w, stats = importance.weights_with_stats(
        x["policy_chosen_logps"], x["policy_rejected_logps"], x["behavior_chosen_logps"],
        x["behavior_rejected_logps"], opts, chosen_lengths=x["chosen_lengths"], rejected_lengths=x["rejected_lengths"])
    if opts["is_control"] != "none":
        log_w = importance.control_log_weights(log_w, opts["is_control"], generator)
        stats = {**importance.weight_stats(log_w, None), "clip_frac": stats["clip_frac"]}
    return log_w, stats


def _wpo_log_weights(entry: Method, opts, x) -> tuple[Tensor | None, dict[str, Tensor]]:
    """(WPO's detached log-weights (B,), its `wpo/*` metrics; clip_frac: pairs at wpo_max_weight), or (None, {})."""
    if not entry.requires_sq_logsumexp(opts):
        return None, {}
    cap = opts["wpo_max_weight"]
    raw, log_w = importance.wpo_log_weights(x["policy_chosen_logps"], x["policy_rejected_logps"],
                                            x["policy_chosen_sq_lse"], x["policy_rejected_sq_lse"],
                                            x["chosen_lengths"], x["rejected_lengths"], cap)
    stats = importance.weight_stats(raw, None if cap is None else 0.5 * math.log(cap), log_w)
    keys = ("weight_mean", "weight_max", "clip_frac", "ess", "top_share")
    return log_w, {f"wpo/{k}": stats[k].detach() for k in keys}


def _check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return float(beta)


def _inputs(entry: Method, opts, **x) -> dict[str, Tensor | None]:
    """The inputs `entry` needs are present (lengths, reference, behavior in pairs); pi_b = pi_ref when
    no behavior log-probs are given; then `_float32_inputs`."""
    if entry.requires_lengths(opts) and (x["chosen_lengths"] is None or x["rejected_lengths"] is None):
        raise ValueError(
            f"method {entry.name!r} with these options needs chosen_lengths and rejected_lengths "
            f"(response token counts, EOS included)"
        )
    if entry.requires_sq_logsumexp(opts) and (x["policy_chosen_sq_lse"] is None or x["policy_rejected_sq_lse"] is None):
        raise ValueError("wpo_weighting needs policy_chosen_sq_lse and policy_rejected_sq_lse (per response, the sum "
                         "over its tokens of logsumexp_v(2 log p(v)): isdaa.logprobs' with_sq_logsumexp)")
    for prefix in ("ref", "behavior"):
        if (x[f"{prefix}_chosen_logps"] is None) != (x[f"{prefix}_rejected_logps"] is None):
            raise ValueError(f"give both {prefix}_chosen_logps and {prefix}_rejected_logps, or neither")
    if x["behavior_chosen_logps"] is None:  # pi_b = pi_ref
        x["behavior_chosen_logps"], x["behavior_rejected_logps"] = x["ref_chosen_logps"], x["ref_rejected_logps"]
    if x["ref_chosen_logps"] is None and entry.requires_reference(x["behavior_chosen_logps"] is not None):
        raise ValueError(f"method {entry.name!r} needs ref_chosen_logps and ref_rejected_logps"
                         + (" (or behavior log-probs)" if not entry.needs_reference else ""))
    return _float32_inputs(**x)


def _metrics(beta, policy_c, policy_r, ref_c, ref_r, stats, drift, eps):
    """TRL's names where they exist, plus ours (is/*, drift/*): detached 0-dim float32 tensors.
    drift/* is logged for every method with a pi_b, IS or not: the unclipped joint log-ratio and the
    ESS / clip fraction the clipped weights exp(min(log r, 2 eps)) WOULD have (the golden-free drift
    signal of `isdaa.drift`; for an IS method without normalization they equal is/ess, is/clip_frac)."""
    with torch.no_grad():
        reward_c, reward_r = beta * (policy_c - ref_c), beta * (policy_r - ref_r)
        metrics = {
            "rewards/chosen": reward_c.mean(),
            "rewards/rejected": reward_r.mean(),
            "rewards/margins": (reward_c - reward_r).mean(),
            "rewards/accuracies": (reward_c > reward_r).float().mean(),
            "logps/chosen": policy_c.mean(),
            "logps/rejected": policy_r.mean(),
            **{f"is/{k}": stats[k] for k in ("weight_mean", "weight_max", "clip_frac", "ess", "top_share")},
        }
        if drift is not None:  # Figure 6's drift: mean unclipped joint log-ratio; mean ratio (may be inf)
            metrics["drift/log_ratio_mean"] = drift.mean()
            metrics["drift/ratio_mean"] = importance.log_mean_exp(drift).exp()
            would_be = importance.weight_stats(drift, eps)
            metrics["drift/ess"] = would_be["ess"]
            metrics["drift/clip_frac"] = would_be["clip_frac"]
    return {k: v.detach() if v.dtype == torch.float64 else v.detach().float() for k, v in metrics.items()}


def _lookup(method: str) -> Method:
    if method in METHODS:
        return METHODS[method]
    near = difflib.get_close_matches(str(method), list(METHODS), n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"unknown method {method!r}.{hint} Valid methods: {', '.join(METHODS)}")


def validate_options(options: Mapping[str, object]) -> dict[str, object]:
    """All options with defaults filled in, each checked by its OPTIONS entry; unknown names are errors."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}. Valid options: {', '.join(OPTIONS)}")
    opts = {**OPTION_DEFAULTS, **options}
    for name, value in opts.items():
        OPTIONS[name].check(value)
    return opts



def _float32_inputs(**tensors) -> dict[str, Tensor | None]:
    """Check each given input is a (B,) tensor of policy_chosen_logps' shape; cast to float32 (bf16
    included; gradients flow through the cast), or float64 when any input is float64 (numerical checks).
    None stays None."""
    shape = None
    out = {}
    for name, t in tensors.items():
        if t is None:
            out[name] = None
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (B,), got {type(t).__name__}")
        if shape is None:
            if t.dim() != 1:
                raise ValueError(f"{name} must have shape (B,), got {tuple(t.shape)}")
            if t.numel() == 0:
                raise ValueError(f"{name} is empty (B = 0): there is no pair to average over")
            shape = t.shape
        elif t.shape != shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} like policy_chosen_logps"
            )
        out[name] = t
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in out.values() if t is not None) else torch.float32
    return {name: None if t is None else t.to(dtype) for name, t in out.items()}
