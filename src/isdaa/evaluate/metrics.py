"""Evaluation metrics (docs/METHOD.md, "Evaluation"): golden win rate and KL(pi_theta || pi_ref)
estimators, pure functions of arrays (no model: log-probs of samples come from
`isdaa.logprobs.score_responses` or are recorded while sampling)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _per_prompt_means(values: np.ndarray, prompt_index: np.ndarray | None) -> np.ndarray:
    """Mean of `values` within each prompt (prompts in order of first appearance)."""
    if prompt_index is None:
        return values
    prompt_index = np.asarray(prompt_index)
    uniq, inv = np.unique(prompt_index, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq))
    return sums / counts


def _se(per_prompt: np.ndarray) -> float:
    """Standard error of the mean over prompts (0 with a single prompt)."""
    n = len(per_prompt)
    return float(per_prompt.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def win_rate(
    sample_rewards: Sequence[float],
    chosen_rewards: Sequence[float],
    prompt_index: Sequence[int],
) -> dict:
    """Golden win rate of sampled responses against the dataset's chosen responses.

    sample_rewards: (S,) golden reward of each sample; prompt_index: (S,) its prompt (0..N-1);
    chosen_rewards: (N,) golden reward of each prompt's chosen response.
    WR = mean over prompts of the per-prompt mean of 1[r(y) > r(chosen)] + 0.5 * 1[r(y) = r(chosen)]
    (equal to the mean over all samples when every prompt has the same number n of samples).
    Returns win_rate, se (over prompts), tie_rate, n_prompts, n_samples and per_prompt (N,) array.
    """
    r = np.asarray(sample_rewards, dtype=np.float64)
    idx = np.asarray(prompt_index, dtype=np.int64)
    rc = np.asarray(chosen_rewards, dtype=np.float64)[idx]  # (S,)
    wins = (r > rc) + 0.5 * (r == rc)  # (S,) in {0, 0.5, 1}
    per_prompt = _per_prompt_means(wins, idx)
    return {
        "win_rate": float(per_prompt.mean()),
        "se": _se(per_prompt),
        "tie_rate": float((r == rc).mean()),
        "n_prompts": len(per_prompt),
        "n_samples": len(r),
        "per_prompt": per_prompt,
    }


def kl_estimates(
    logp_policy: Sequence[float],
    logp_ref: Sequence[float],
    prompt_index: Sequence[int] | None = None,
    trim: float = 0.1,
) -> dict:
    """KL(pi_theta || pi_ref) from samples y ~ pi_theta (Schulman 2020), per sequence
    l = logp_theta(y) - logp_ref(y):
        k1 = mean(l)                       unbiased, can be negative
        k3 = mean(exp(-l) - 1 + l)         unbiased, >= 0, heavy-tailed (exp(-l) for l << 0)
    (docs/METHOD.md: the paper's appendix prints pi_theta/pi_ref - 1, a typo; k3 uses pi_ref/pi_theta.)
    Unbiased only when the samples come from pi_theta itself (temperature 1, no top-p).

    Robust summaries: `l_median` (median of l) and `k1_trimmed` (mean of l with the `trim` fraction
    cut from each tail). sqrt_k1 / sqrt_k3 = sqrt(max(k, 0)). Standard errors are over prompts when
    `prompt_index` is given (per-prompt means first), else over samples. `per_prompt_k1/k3`: (N,).
    """
    lp = np.asarray(logp_policy, dtype=np.float64)
    lr = np.asarray(logp_ref, dtype=np.float64)
    l = lp - lr  # (S,)
    k3_terms = np.expm1(-l) + l  # exp(-l) - 1 + l, accurate near l = 0
    pk1 = _per_prompt_means(l, prompt_index)
    pk3 = _per_prompt_means(k3_terms, prompt_index)
    k1, k3 = float(l.mean()), float(k3_terms.mean())
    lo, hi = np.quantile(l, [trim, 1 - trim]) if len(l) else (0.0, 0.0)
    kept = l[(l >= lo) & (l <= hi)]
    return {
        "k1": k1,
        "k3": k3,
        "k1_se": _se(pk1),
        "k3_se": _se(pk3),
        "sqrt_k1": float(np.sqrt(max(k1, 0.0))),
        "sqrt_k3": float(np.sqrt(max(k3, 0.0))),
        "l_median": float(np.median(l)) if len(l) else 0.0,
        "k1_trimmed": float(kept.mean()) if len(kept) else 0.0,
        "trim": trim,
        "n_samples": len(l),
        "per_prompt_k1": pk1,
        "per_prompt_k3": pk3,
    }
