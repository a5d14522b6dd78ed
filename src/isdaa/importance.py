"""Importance weights of IS-DAAs (paper Section 3.1) and their diagnostics, from (B,) log-prob tensors.

Every importance weight in isdaa comes from here: the IS losses (`isdaa.losses`), the trainer's
`is/*` metrics, the lab's Figure 6 statistics, the bandit (Figure 2) and the Gaussian toy (Figure 1).
For a pair (y_c, y_r) drawn from the behavior policy pi_b (docs/METHOD.md decides the form):

    log r = [logp_theta(y_c) - logp_b(y_c)] + [logp_theta(y_r) - logp_b(y_r)]      joint log-ratio
    log w = min(log r, 2 eps)                                                      clipped from above
    w     = exp(log w), detached: the weight multiplies the loss, it is never differentiated

The joint ratio (both responses in the numerator) follows Appendix B.1's proof and the authors'
release (Eq. 11's text prints an inverted rejected factor); the upper clip in log space follows the
release (Eq. 13 prints max(., eps)); no lower clip (Section 4.3's implicit early stopping).

Diagnostics of a batch of B weights:
    ess        = (sum w)^2 / (B sum w^2), in (0, 1]: 1 iff all weights are equal
    clip_frac  = fraction of pairs with log r > 2 eps
    top_share  = max_i w_i / sum_i w_i, in [1/B, 1]: the share of the batch's weighted loss that the
                 heaviest pair carries when all pairs have equal per-pair losses (w_i |dL_i/dh_i| with
                 the gradient magnitude held equal; exact for that case, cheap for every case). 1/B for
                 equal weights, -> 1 when one pair dominates.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def safe_lengths(lengths: Tensor) -> Tensor:
    """Response lengths as float, at least 1 (a response always holds its EOS; this guards division)."""
    return lengths.float().clamp(min=1.0)


def log_ratios(
    policy_chosen_logps, policy_rejected_logps, behavior_chosen_logps, behavior_rejected_logps,
    *, length_normalize=False, chosen_lengths=None, rejected_lengths=None,
) -> Tensor:
    """Detached joint log-ratio log pi_theta/pi_b of each pair, (B,). `length_normalize`: the sum of the
    per-token mean log-ratios instead (beyond the paper; needs both lengths)."""
    with torch.no_grad():
        log_ratio_c = policy_chosen_logps - behavior_chosen_logps
        log_ratio_r = policy_rejected_logps - behavior_rejected_logps
        if length_normalize:
            log_ratio_c = log_ratio_c / safe_lengths(chosen_lengths)
            log_ratio_r = log_ratio_r / safe_lengths(rejected_lengths)
        return (log_ratio_c + log_ratio_r).detach()


def clip_log_weights(log_ratio: Tensor, eps: float | None) -> Tensor:
    """log w = min(log r, 2 eps), (B,); eps None: no clip (the bandit's and toy's unclipped curves)."""
    return log_ratio if eps is None else log_ratio.clamp(max=2.0 * eps)


def self_normalize(log_w: Tensor) -> Tensor:
    """log(w / mean(w)) in log space, so that the weights average exactly 1 (beyond the paper)."""
    return log_w - (torch.logsumexp(log_w, dim=0) - math.log(log_w.numel()))


def _clip_and_normalize(log_ratio: Tensor, eps: float | None, self_normalized: bool) -> Tensor:
    log_w = clip_log_weights(log_ratio, eps)
    return self_normalize(log_w) if self_normalized else log_w


def log_weights(
    policy_chosen_logps, policy_rejected_logps, behavior_chosen_logps, behavior_rejected_logps,
    eps: float | None, *, self_normalized=False, length_normalize=False, chosen_lengths=None,
    rejected_lengths=None,
) -> Tensor:
    """Detached, clipped log importance weights (B,): clip_log_weights(log_ratios(...), eps), then
    `self_normalize` when asked (after clipping)."""
    log_ratio = log_ratios(
        policy_chosen_logps, policy_rejected_logps, behavior_chosen_logps, behavior_rejected_logps,
        length_normalize=length_normalize, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths,
    )
    return _clip_and_normalize(log_ratio, eps, self_normalized)


def weights_with_stats(
    policy_chosen_logps, policy_rejected_logps, behavior_chosen_logps, behavior_rejected_logps,
    options, *, chosen_lengths=None, rejected_lengths=None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(log w (B,), `weight_stats`) under the IS options of a loss config: `options` maps is_clip,
    is_self_normalize and is_length_normalize (a resolved `config.LossOptions` as a dict, or
    `losses.validate_options(...)`). The IS losses and the lab's Figure 6 both go through here."""
    eps = options["is_clip"]
    log_ratio = log_ratios(
        policy_chosen_logps, policy_rejected_logps, behavior_chosen_logps, behavior_rejected_logps,
        length_normalize=options["is_length_normalize"], chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    log_w = _clip_and_normalize(log_ratio, eps, options["is_self_normalize"])
    return log_w, weight_stats(log_ratio, eps, log_w)


def clip_fraction(log_ratio: Tensor, eps: float | None) -> Tensor:
    """Fraction of pairs whose weight was clipped (log r > 2 eps), 0-dim; 0 without a clip."""
    if eps is None:
        return log_ratio.new_zeros(())
    return (log_ratio > 2.0 * eps).float().mean()


def ess_from_sums(sum_w: Tensor, sum_w2: Tensor, n) -> Tensor:
    """(sum w)^2 / (n sum w^2) from the sums, so that micro-batches and processes can add them up."""
    return sum_w**2 / (n * sum_w2)


def ess(weights: Tensor) -> Tensor:
    """Effective sample size fraction of weights (B,), 0-dim in (0, 1]. Scale-invariant: computed on
    w / max(w), so large weights do not overflow. NaN if every weight is 0 (use `ess_from_log`)."""
    w = weights.detach().float()
    w = w / w.max()
    return ess_from_sums(w.sum(), (w**2).sum(), w.numel())


def ess_from_log(log_w: Tensor) -> Tensor:
    """ESS of exp(log_w), in log space: exp(2 lse(log w) - lse(2 log w) - log B). Never NaN."""
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0) - math.log(log_w.numel()))


def top_share(log_w: Tensor) -> Tensor:
    """max_i w_i / sum_i w_i from log-weights (B,), 0-dim in [1/B, 1] (see the module docstring)."""
    return torch.exp(log_w.max() - torch.logsumexp(log_w, 0))


SCALED_METRICS = ("weight_mean", "weight_max")  # the weight metrics that scale with the weights (not ESS, top share)


def log_weight_sums(log_w: Tensor) -> Tensor:
    """(4,) [logsumexp(log w), logsumexp(2 log w), max log w, count] of a batch's log-weights (B,): what a
    batch split into micro-batches or processes combines (`combine_log_weight_sums`) to get the whole
    batch's ESS, top-pair share and mean weight, in log space (never NaN, never overflowing)."""
    log_w = log_w.detach().double()
    return torch.stack([torch.logsumexp(log_w, 0), torch.logsumexp(2 * log_w, 0), log_w.max(),
                        log_w.new_tensor(float(log_w.numel()))])


def combine_log_weight_sums(sums: Tensor) -> Tensor:
    """(K, 4) `log_weight_sums` of K parts of a batch -> (4,) those of the whole batch."""
    return torch.stack([torch.logsumexp(sums[:, 0], 0), torch.logsumexp(sums[:, 1], 0), sums[:, 2].max(),
                        sums[:, 3].sum()])


def pooled_weight_metrics(sums: Tensor) -> dict[str, Tensor]:
    """The weight metrics that are NOT means over pairs, from a whole batch's `log_weight_sums`:
    ess = exp(2 lse(log w) - lse(2 log w) - log n), top_share = exp(max log w - lse(log w)). A trainer
    that splits a batch into micro-batches or processes combines the parts' sums and recomputes these
    instead of averaging per-part values (which would be the ESS of each part, not of the batch)."""
    lse, lse2, top, n = sums.unbind(0)
    return {"ess": torch.exp(2 * lse - lse2 - torch.log(n)), "top_share": torch.exp(top - lse)}  # float64


def log_mean_weight(sums: Tensor) -> Tensor:
    """log mean w of a whole batch from its `log_weight_sums`: self-normalization's log normalizer."""
    return sums[0] - torch.log(sums[3])


def log_mean_exp(x: Tensor) -> Tensor:
    """log mean exp(x) over (B,), 0-dim: the log of the mean ratio without overflow (may be inf)."""
    return torch.logsumexp(x, 0) - math.log(x.numel())


def weight_stats(log_ratio: Tensor, eps: float | None, log_w: Tensor | None = None) -> dict[str, Tensor]:
    """Diagnostics of a batch, detached 0-dim tensors: weight_mean, weight_max, clip_frac, ess,
    top_share of the weights exp(log_w) (default: clip_log_weights(log_ratio, eps)), and the drift of
    the unclipped ratio: log_ratio_mean and ratio_mean_log = log mean exp(log r) (Figure 6)."""
    with torch.no_grad():
        log_w = clip_log_weights(log_ratio, eps) if log_w is None else log_w
        w = log_w.exp()
        return {
            "weight_mean": w.mean(),
            "weight_max": w.max(),
            "clip_frac": clip_fraction(log_ratio, eps),
            "ess": ess_from_log(log_w),
            "top_share": top_share(log_w),
            "log_ratio_mean": log_ratio.mean(),
            "ratio_mean_log": log_mean_exp(log_ratio),
        }


# --------------------------------------------------------------------------------------------------
# WPO weights (Zhou et al. 2024) and the controls of IS weights


def wpo_log_weights(
    policy_chosen_logps, policy_rejected_logps, policy_chosen_sq_lse, policy_rejected_sq_lse,
    chosen_lengths, rejected_lengths, max_weight: float | None,
) -> tuple[Tensor, Tensor]:
    """WPO's detached pair log-weights, (B,) each: (unclamped, clamped at log max_weight).

        log w = mean_t [log p(c_t) - log sum_v p(v)^2] + mean_t [log p(r_t) - log sum_v p(v)^2]

    Zhou et al. 2024, Eq. 2 with its "aligned" per-token normalizer, as TRL's `use_weighting` computes
    it: `sq_lse` is the sum over the response's tokens of logsumexp_v(2 log p_theta(v | context))
    (`isdaa.logprobs.sq_logsumexp`), |y| its token count. TRL < 1.0 clamps w at 1 (`max_weight` 1.0);
    TRL 1.x does not clamp (`max_weight` None)."""
    with torch.no_grad():
        mean_c = (policy_chosen_logps - policy_chosen_sq_lse) / safe_lengths(chosen_lengths)
        mean_r = (policy_rejected_logps - policy_rejected_sq_lse) / safe_lengths(rejected_lengths)
        raw = (mean_c + mean_r).detach()
        return raw, raw if max_weight is None else raw.clamp(max=math.log(max_weight))


CONTROLS = ("none", "permute", "mean", "matched_random")
RANDOM_CONTROLS = ("permute", "matched_random")  # these draw from a generator


def control_log_weights(log_w: Tensor, control: str, generator: torch.Generator | None = None) -> Tensor:
    """The log-weights (B,) a control of the IS weights applies instead of `log_w` (a whole batch's):

    permute         log_w[perm], perm uniform from `generator`: the batch's weights, none on its own pair
    mean            every pair gets log mean(w): the batch's scale, no reweighting (ESS 1)
    matched_random  w_i proportional to exp(sigma z_i), z_i ~ N(0, 1) iid from `generator` (log-normal),
                    sigma solved so that the batch's ESS equals ESS(log_w) (`matched_sigma`), scaled to
                    mean exactly 1: the batch's concentration, not its scale nor its pairs
    """
    if control == "none":
        return log_w
    if control == "mean":
        return log_mean_exp(log_w).expand_as(log_w).clone()
    if generator is None:
        raise ValueError(f"is_control={control!r} draws random numbers: pass a torch.Generator")
    n = log_w.numel()
    if control == "permute":
        return log_w[torch.randperm(n, generator=generator).to(log_w.device)]
    if control == "matched_random":
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        lw = matched_sigma(z, float(ess_from_log(log_w.detach().double().cpu()))) * z  # float64, CPU
        return (lw - log_mean_exp(lw)).to(log_w.dtype).to(log_w.device)
    raise ValueError(f"unknown is_control {control!r}; valid: {', '.join(CONTROLS)}")


def matched_sigma(z: Tensor, target_ess: float, iters: int = 200) -> float:
    """sigma >= 0 with ESS(exp(sigma z)) = target_ess, by bisection: ESS(exp(sigma z)) falls monotonically
    from 1 (sigma = 0) towards (ties at max z) / B as sigma grows (its log-derivative is 2 (E_p[z] - E_q[z])
    <= 0, p and q the tilts of z by sigma and 2 sigma). A target below that limit gets the largest sigma tried."""
    z = z.double()
    if target_ess >= 1.0 or float(z.max() - z.min()) == 0.0:
        return 0.0
    lo, hi = 0.0, 1.0
    while float(ess_from_log(hi * z)) > target_ess and hi < 1e6:
        lo, hi = hi, 2 * hi
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(ess_from_log(mid * z)) > target_ess else (lo, mid)
    return 0.5 * (lo + hi)


def importance_stats(
    policy_chosen_logps, policy_rejected_logps, behavior_chosen_logps, behavior_rejected_logps,
    options, *, chosen_lengths=None, rejected_lengths=None,
) -> dict[str, float]:
    """Figure 6's statistics of a set of pairs, as floats: `weights_with_stats` under the run's IS
    `options` (see there; a run's resolved `loss` config), plus logps_chosen / logps_rejected (means of
    pi_theta's log-probs) and n_pairs. Inputs (P,) tensors of summed log-probs (use float64 to compare
    a policy with itself: the ratio is then 1 to round-off)."""
    _, stats = weights_with_stats(policy_chosen_logps, policy_rejected_logps, behavior_chosen_logps,
                                  behavior_rejected_logps, options, chosen_lengths=chosen_lengths,
                                  rejected_lengths=rejected_lengths)
    stats = {k: float(v) for k, v in stats.items()}
    stats.update(logps_chosen=float(policy_chosen_logps.mean()), logps_rejected=float(policy_rejected_logps.mean()),
                 n_pairs=int(policy_chosen_logps.numel()))
    return stats
