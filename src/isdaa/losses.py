"""Preference losses (DPO, IPO, RPO, chi-PO, R-DPO), importance weights (IS-DAAs), one registry.

Everything here is a pure function of per-pair `(B,)` tensors of SUMMED response log-probs (see
METHOD.md's notation), response lengths where a method needs them, and scalar hyperparameters. No
model, tokenizer or config object enters. Notation:

    u_c = logp_theta(chosen) - logp_ref(chosen)       u_r likewise       h = u_c - u_r

Base losses return UNREDUCED per-pair losses `(B,)`. An importance-sampled method `is-<name>` is
composition: `w * <name>` with detached weights from `importance_log_weights` (Section 3.1).

`METHODS` maps every config name to a `Method` entry declaring what the method needs; callers ask
the entry (`METHODS[name].requires_lengths(options)`) instead of branching on names. The front door
`preference_loss` validates inputs, computes in float32 whatever the input dtype, and returns the
mean loss, per-pair losses, weights and metrics (0-dim detached tensors: no host sync per metric).

A new DAA = one function below, one `Method` entry in `_BASE`, one test.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# chi-PO exponentiates log-ratios; u is clamped from above at this bound before exp. e^40 ~ 2.4e17, so
# beta * e^u stays far below float32's max (3.4e38) for any sensible beta, while the sigmoid is already
# saturated there (for beta >= 1e-15, beta*e^40 > 2e2). Beyond the bound the exp term has zero gradient;
# the log term (u_c - u_r) keeps its gradient. No bound from below: e^u underflows to 0 harmlessly.
CHIPO_MAX_LOG_RATIO = 40.0


# --------------------------------------------------------------------------------------------------
# Base losses: (B,) in, (B,) out


def _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    """u_c, u_r: the log-ratios log pi_theta/pi_ref of the chosen and rejected responses, (B,) each."""
    return policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps


def dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """DPO: -log sigmoid(beta * h). Paper Eq. 6 with f(x) = -log sigmoid(x) (Rafailov et al. 2023)."""
    u_c, u_r = _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * (u_c - u_r))  # (B,)


def ipo(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
    *, length_normalize=False, chosen_lengths=None, rejected_lengths=None,
):
    """IPO: (h - 1/(2 beta))^2 (Azar et al. 2024, Eq. 17; paper Eq. 6 with f(x) = (x-1)^2 rescaled).

    Summed log-probs by default (paper, release). `length_normalize` divides u_c by |chosen| and u_r
    by |rejected| first (TRL's choice); it needs both lengths.
    """
    u_c, u_r = _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if length_normalize:
        u_c, u_r = u_c / _safe_len(chosen_lengths), u_r / _safe_len(rejected_lengths)
    return (u_c - u_r - 1.0 / (2.0 * beta)) ** 2


def rpo(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
    *, eta=0.005, nll_mean=False, chosen_lengths=None,
):
    """RPO, the authors' release's form: -log sigmoid(beta h) - beta * eta * logp_theta(chosen).

    The NLL of the chosen response is summed over tokens; `nll_mean` uses the per-token mean instead
    (TRL/OpenRLHF style), which needs `chosen_lengths`.
    """
    nll = -policy_chosen_logps
    if nll_mean:
        nll = nll / _safe_len(chosen_lengths)
    return dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) + (
        beta * eta * nll
    )


def chipo(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, *, rmax=None,
):
    """chi-PO (Huang et al. 2024): -log sigmoid(clip_[-2R, 2R](beta * [(e^u_c - e^u_r) + (u_c - u_r)])).

    The link phi(z) = z + log z applied to z = pi_theta/pi_ref. No official code exists; this follows
    the paper's formula. u is clamped from above at CHIPO_MAX_LOG_RATIO (40) inside exp only, for
    float32 stability. `rmax` = R; None (default) means no clip.
    """
    u_c, u_r = _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    top = CHIPO_MAX_LOG_RATIO
    logits = beta * ((u_c.clamp(max=top).exp() - u_r.clamp(max=top).exp()) + (u_c - u_r))
    if rmax is not None:
        logits = logits.clamp(-2.0 * rmax, 2.0 * rmax)
    return -F.logsigmoid(logits)


def rdpo(
    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
    *, alpha=0.01, chosen_lengths, rejected_lengths,
):
    """R-DPO (Park et al. 2024, Eq. 9): -log sigmoid(beta h + alpha (|chosen| - |rejected|)).

    PLUS sign: a chosen response longer than the rejected one raises the logit, so that pair is
    already "won" by length and gives a smaller gradient: the model learns less from length.
    """
    u_c, u_r = _margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    length_gap = chosen_lengths.to(u_c.dtype) - rejected_lengths.to(u_c.dtype)
    return -F.logsigmoid(beta * (u_c - u_r) + alpha * length_gap)


def _safe_len(lengths: Tensor) -> Tensor:
    # A response always holds at least its EOS token; clamp guards the division anyway.
    return lengths.float().clamp(min=1.0)


# --------------------------------------------------------------------------------------------------
# Importance weights (Section 3.1; METHOD.md decides the form)


def importance_log_weights(
    policy_chosen_logps, policy_rejected_logps, behavior_chosen_logps, behavior_rejected_logps,
    eps=1.0, *, self_normalize=False, length_normalize=False, chosen_lengths=None, rejected_lengths=None,
):
    """Detached, clipped log importance weights `(B,)`:

        log w = min( [logp_theta(c) - logp_b(c)] + [logp_theta(r) - logp_b(r)], 2*eps )

    The JOINT ratio of the pair under pi_theta and pi_b (Appendix B.1's proof and the release; Eq. 11's
    text prints an inverted rejected factor). Clipped from ABOVE at exp(2*eps), in log space (the
    release; Eq. 13 prints max(., eps)). No lower clip. Options beyond the paper (default off):
    `length_normalize` sums per-token mean log-ratios instead (needs both lengths); `self_normalize`
    divides w by its batch mean (after clipping), so the weights average exactly 1.
    """
    log_w = _joint_log_ratio(
        policy_chosen_logps, policy_rejected_logps, behavior_chosen_logps, behavior_rejected_logps,
        length_normalize, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
    ).clamp(max=2.0 * eps)
    if self_normalize:  # log(w / mean(w)) in log space
        log_w = log_w - (torch.logsumexp(log_w, dim=0) - math.log(log_w.numel()))
    return log_w


def _joint_log_ratio(
    policy_c, policy_r, behavior_c, behavior_r, length_normalize=False, *, chosen_lengths=None,
    rejected_lengths=None,
):
    """Detached log pi_theta(c)/pi_b(c) + log pi_theta(r)/pi_b(r), (B,); per-token means if
    length_normalize."""
    with torch.no_grad():
        log_ratio_c, log_ratio_r = policy_c - behavior_c, policy_r - behavior_r
        if length_normalize:
            log_ratio_c = log_ratio_c / _safe_len(chosen_lengths)
            log_ratio_r = log_ratio_r / _safe_len(rejected_lengths)
        return (log_ratio_c + log_ratio_r).detach()


def ess(weights: Tensor) -> Tensor:
    """Effective sample size fraction (sum w)^2 / (B * sum w^2), in (0, 1]; 1 iff all weights are equal.

    Scale-invariant: computed on w / max(w) so large weights do not overflow. NaN if every weight is 0.
    """
    w = weights.detach().float()
    w = w / w.max()
    return w.sum() ** 2 / (w.numel() * (w**2).sum())


def _ess_from_log(log_w: Tensor) -> Tensor:
    """ESS of exp(log_w), in log space: exp(2 lse(log w) - lse(2 log w) - log B). Never NaN."""
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0) - math.log(log_w.numel()))


# --------------------------------------------------------------------------------------------------
# Registry

# Every option a config may carry, with its default. Options irrelevant to a method are accepted
# silently (one config can carry all of them); unknown names are errors.
OPTION_DEFAULTS: dict[str, object] = {
    "is_clip": 1.0,
    "is_self_normalize": False,
    "is_length_normalize": False,
    "ipo_length_normalize": False,
    "rpo_eta": 0.005,
    "rpo_nll_mean": False,
    "chipo_rmax": None,
    "rdpo_alpha": 0.01,
}
IS_OPTIONS = ("is_clip", "is_self_normalize", "is_length_normalize")


@dataclass(frozen=True)
class Method:
    """What a method is and what it needs. Fields:

    name             config name (`dpo`, `is-dpo`, ...)
    loss_fn          base loss, (B,) log-prob tensors + beta + keywords -> (B,) unreduced losses
    option_args      option name -> keyword of loss_fn it sets (e.g. rpo_eta -> eta)
    length_args      which of `chosen_lengths` / `rejected_lengths` loss_fn accepts
    needs_lengths    lengths are always required (R-DPO)
    length_options   boolean options that, when true, make both lengths required
    importance_weighted  w * loss with detached IS weights; reads behavior log-probs (else reference)
    """

    name: str
    loss_fn: Callable[..., Tensor]
    option_args: Mapping[str, str] = field(default_factory=dict)
    length_args: tuple[str, ...] = ()
    needs_lengths: bool = False
    length_options: tuple[str, ...] = ()
    importance_weighted: bool = False

    @property
    def uses_behavior_logps(self) -> bool:
        """True when behavior log-probs (pi_b) enter the loss; without them pi_b = pi_ref."""
        return self.importance_weighted

    @property
    def options(self) -> tuple[str, ...]:
        """The options this method reads (others are accepted and ignored)."""
        return tuple(self.option_args) + (IS_OPTIONS if self.importance_weighted else ())

    def requires_lengths(self, options: Mapping[str, object] | None = None) -> bool:
        """Whether response lengths must be given, with these options."""
        options = options or {}
        flags = self.length_options + (("is_length_normalize",) if self.importance_weighted else ())
        return self.needs_lengths or any(bool(options.get(o, OPTION_DEFAULTS[o])) for o in flags)


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
)

METHODS: dict[str, Method] = {m.name: m for m in _BASE}
METHODS.update({f"is-{m.name}": replace(m, name=f"is-{m.name}", importance_weighted=True) for m in _BASE})


# --------------------------------------------------------------------------------------------------
# Front door


@dataclass
class PreferenceLossOutput:
    """loss: scalar mean of `losses`; losses: (B,) per-pair losses with weights applied; weights: (B,)
    detached (ones for non-IS methods); metrics: name -> detached 0-dim float32 tensor (convert once per
    logging step with `metrics_float()`, so a GPU run does not sync the host per metric per step)."""

    loss: Tensor
    losses: Tensor
    weights: Tensor
    metrics: dict[str, Tensor]

    def metrics_float(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.metrics.items()}


def preference_loss(
    method: str,
    beta: float,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    behavior_chosen_logps: Tensor | None = None,
    behavior_rejected_logps: Tensor | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    **options,
) -> PreferenceLossOutput:
    """The loss of `method` (a key of METHODS) on a batch of (B,) summed log-probs, in float32.

    Options by name (all known options are accepted for every method): is_clip (eps, 1.0),
    is_self_normalize (False), is_length_normalize (False), ipo_length_normalize (False), rpo_eta
    (0.005), rpo_nll_mean (False), chipo_rmax (None), rdpo_alpha (0.01). Behavior log-probs default to
    the reference's (pi_b = pi_ref). Raises ValueError on an unknown method/option, a missing required
    input, mismatched shapes, beta <= 0 or is_clip <= 0 (TypeError on a non-tensor or non-bool flag).
    """
    entry = _lookup(method)
    opts = _validate_options(options)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    beta = float(beta)
    if entry.requires_lengths(opts) and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(
            f"method {entry.name!r} with these options needs chosen_lengths and rejected_lengths "
            f"(response token counts, EOS included)"
        )
    if (behavior_chosen_logps is None) != (behavior_rejected_logps is None):
        raise ValueError("give both behavior_chosen_logps and behavior_rejected_logps, or neither")
    if behavior_chosen_logps is None:  # pi_b = pi_ref
        behavior_chosen_logps, behavior_rejected_logps = ref_chosen_logps, ref_rejected_logps
    x = _float32_inputs(
        policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps,
        behavior_chosen_logps=behavior_chosen_logps, behavior_rejected_logps=behavior_rejected_logps,
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
    )
    policy_c, policy_r, ref_c, ref_r = (x[k] for k in list(x)[:4])
    lengths = {"chosen_lengths": x["chosen_lengths"], "rejected_lengths": x["rejected_lengths"]}

    kwargs = {arg: opts[opt] for opt, arg in entry.option_args.items()}
    kwargs.update({a: lengths[a] for a in entry.length_args})
    base_losses = entry.loss_fn(policy_c, policy_r, ref_c, ref_r, beta, **kwargs)  # (B,)

    behavior = (x["behavior_chosen_logps"], x["behavior_rejected_logps"])
    if entry.importance_weighted:
        weights, clip_frac, ess_value = _importance(policy_c, policy_r, *behavior, opts, lengths)
    else:
        weights = torch.ones_like(base_losses)
        clip_frac, ess_value = weights.new_zeros(()), weights.new_ones(())
    losses = weights * base_losses
    # unclipped joint log(pi_theta / pi_b), logged for every method (Figure 6)
    drift = _joint_log_ratio(policy_c, policy_r, *behavior)
    metrics = _metrics(beta, policy_c, policy_r, ref_c, ref_r, weights, clip_frac, ess_value, drift)
    return PreferenceLossOutput(loss=losses.mean(), losses=losses, weights=weights, metrics=metrics)


def _importance(policy_c, policy_r, behavior_c, behavior_r, opts, lengths):
    """Weights (B,), the fraction clipped and the ESS (0-dim), all detached."""
    eps, length_normalize = opts["is_clip"], opts["is_length_normalize"]
    log_w = importance_log_weights(
        policy_c, policy_r, behavior_c, behavior_r, eps,
        self_normalize=opts["is_self_normalize"], length_normalize=length_normalize, **lengths,
    )
    raw = _joint_log_ratio(policy_c, policy_r, behavior_c, behavior_r, length_normalize, **lengths)
    return log_w.exp(), (raw > 2.0 * eps).float().mean(), _ess_from_log(log_w)


def _metrics(beta, policy_c, policy_r, ref_c, ref_r, weights, clip_frac, ess_value, raw_log_ratio):
    """TRL's names where they exist, plus ours (is/*, drift/*): detached 0-dim float32 tensors."""
    with torch.no_grad():
        reward_c, reward_r = beta * (policy_c - ref_c), beta * (policy_r - ref_r)
        n = raw_log_ratio.numel()
        metrics = {
            "rewards/chosen": reward_c.mean(),
            "rewards/rejected": reward_r.mean(),
            "rewards/margins": (reward_c - reward_r).mean(),
            "rewards/accuracies": (reward_c > reward_r).float().mean(),
            "logps/chosen": policy_c.mean(),
            "logps/rejected": policy_r.mean(),
            "is/weight_mean": weights.mean(),
            "is/weight_max": weights.max(),
            "is/clip_frac": clip_frac,
            "is/ess": ess_value,
            # Figure 6's drift: mean unclipped joint log-ratio, and mean ratio via log-mean-exp (may be inf)
            "drift/log_ratio_mean": raw_log_ratio.mean(),
            "drift/ratio_mean": torch.exp(torch.logsumexp(raw_log_ratio, 0) - math.log(n)),
        }
    return {k: v.detach().float() for k, v in metrics.items()}


def _lookup(method: str) -> Method:
    if method in METHODS:
        return METHODS[method]
    near = difflib.get_close_matches(str(method), list(METHODS), n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ValueError(f"unknown method {method!r}.{hint} Valid methods: {', '.join(METHODS)}")


def _validate_options(options: Mapping[str, object]) -> dict[str, object]:
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}. Valid options: {', '.join(OPTION_DEFAULTS)}"
        )
    opts = {**OPTION_DEFAULTS, **options}

    def number(name, lower, strict):
        v = opts[name]
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (v <= lower if strict else v < lower):
            raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {lower}, got {v!r}")

    number("is_clip", 0, strict=True)
    number("rpo_eta", 0, strict=False)
    number("rdpo_alpha", 0, strict=False)
    if opts["chipo_rmax"] is not None:
        number("chipo_rmax", 0, strict=True)
    for name in ("is_self_normalize", "is_length_normalize", "ipo_length_normalize", "rpo_nll_mean"):
        if not isinstance(opts[name], bool):
            raise TypeError(f"{name} must be True or False, got {opts[name]!r}")
    return opts


def _float32_inputs(**tensors) -> dict[str, Tensor | None]:
    """Check each given input is a (B,) tensor of policy_chosen_logps' shape; cast to float32 (bf16
    included; gradients flow through the cast). None stays None."""
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
        out[name] = t.float()
    return out
