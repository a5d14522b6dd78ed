"""The base preference losses: pure functions of per-pair `(B,)` tensors of SUMMED response log-probs
(docs/METHOD.md's notation), response lengths where a method needs them, and scalar hyperparameters,
returning UNREDUCED per-pair losses `(B,)`. No model, tokenizer, config or registry enters. Notation:

    u_c = logp_theta(chosen) - logp_ref(chosen)       u_r likewise       h = u_c - u_r

Each is one entry of the registry (`isdaa.registry.METHODS`), which also derives its `is-<name>` variant
(w * loss, Section 3.1); `isdaa.losses.preference_loss` is the front door that applies them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from isdaa.importance import safe_lengths

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


__all__ = ["chipo", "dpo", "dpo_norm", "dpo_sft", "ipo", "rdpo", "rpo", "simpo"]
