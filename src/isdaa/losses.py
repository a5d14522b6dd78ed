"""The front door of the losses: `preference_loss(method, beta, ...)` on a batch of (B,) log-prob tensors.

Everything here is a pure function of per-pair `(B,)` tensors of SUMMED response log-probs (docs/METHOD.md),
response lengths where a method needs them, and scalar hyperparameters; no model, tokenizer or config enters.
The registry (`isdaa.registry`: OPTIONS, METHODS) says what each method is; its base losses are in
`isdaa.base_losses`. An importance-sampled method `is-<name>` is composition: `w * <name>` with detached
weights from `isdaa.importance` (Section 3.1); so is the loss option `wpo_weighting` of every base method
(WPO's weights, Zhou et al. 2024), and `is_control` swaps an IS method's weights for a control (permuted,
batch mean, ESS-matched random). `preference_loss` validates inputs, computes in float32 (float64 for
float64 inputs) and returns the mean loss, per-pair losses, weights, log-weights and metrics (0-dim detached
tensors: no host sync per metric). The registry's names are re-exported here (`from isdaa.losses import
METHODS, OPTIONS, preference_loss`).
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from isdaa import importance
from isdaa.base_losses import CHIPO_MAX_LOG_RATIO, chipo, dpo, dpo_norm, dpo_sft, ipo, rdpo, rpo, simpo
from isdaa.registry import (
    BASE_METHODS,
    IS_OPTIONS,
    METHODS,
    OPTION_DEFAULTS,
    OPTIONS,
    WPO_OPTIONS,
    WPO_WITH_IS,
    Lengths,
    Method,
    Option,
    methods_help,
)

Tensor = torch.Tensor



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


__all__ = [  # the front door, and the registry and base losses under the names callers have always used
    "BASE_METHODS", "CHIPO_MAX_LOG_RATIO", "IS_OPTIONS", "METHODS", "OPTIONS", "OPTION_DEFAULTS", "WPO_OPTIONS",
    "WPO_WITH_IS", "Lengths", "Method", "Option", "PreferenceLossOutput", "chipo", "dpo", "dpo_norm", "dpo_sft",
    "ipo", "methods_help", "preference_loss", "rdpo", "rpo", "simpo", "validate_options",
]
