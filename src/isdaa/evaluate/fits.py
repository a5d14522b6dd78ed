"""Over-optimization curves of Gao et al. (2022), fitted to (d = sqrt KL, R = win rate minus the
reference policy's win rate), so R(0) = 0 by construction:

    RL form          R(d) = d * (alpha - beta * log d)
    best-of-n form   R(d) = d * (alpha - beta * d)

Both are linear in (alpha, beta): least squares with numpy lstsq on the design matrix
[d, -d log d] or [d, -d^2] (no intercept). Bootstrap intervals resample PROMPTS: per-checkpoint win
rates (and KL, when per-prompt KL is given) and the reference's win rate are recomputed on the same
resampled prompts, then refitted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FORMS = ("rl", "bon")


def _design(d: np.ndarray, form: str) -> np.ndarray:
    d = np.asarray(d, dtype=np.float64)
    if form == "rl":
        dlogd = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)  # d log d -> 0 at d = 0
        return np.stack([d, -dlogd], axis=1)
    if form == "bon":
        return np.stack([d, -d * d], axis=1)
    raise ValueError(f"unknown Gao form {form!r} (rl | bon)")


def gao_curve(d, alpha: float, beta: float, form: str = "rl") -> np.ndarray:
    """R(d) for the given form (vectorized; R(0) = 0)."""
    return _design(np.atleast_1d(d), form) @ np.array([alpha, beta])


def _fit(d, r, form: str) -> dict:
    d, r = np.asarray(d, dtype=np.float64), np.asarray(r, dtype=np.float64)
    if d.shape != r.shape or d.ndim != 1:
        raise ValueError("d and r must be 1-D arrays of the same length")
    if np.any(d < 0):
        raise ValueError("d = sqrt(KL) must be >= 0")
    X = _design(d, form)
    coef, *_ = np.linalg.lstsq(X, r, rcond=None)
    resid = r - X @ coef
    return {"form": form, "alpha": float(coef[0]), "beta": float(coef[1]), "rss": float(resid @ resid),
            "n_points": len(d)}


def fit_gao_rl(d: Sequence[float], r: Sequence[float]) -> dict:
    """Least-squares fit of R(d) = d (alpha - beta log d); returns alpha, beta, rss, n_points."""
    return _fit(d, r, "rl")


def fit_gao_bon(d: Sequence[float], r: Sequence[float]) -> dict:
    """Least-squares fit of R(d) = d (alpha - beta d); returns alpha, beta, rss, n_points."""
    return _fit(d, r, "bon")


def bootstrap_fit(
    per_prompt_win: np.ndarray,
    ref_per_prompt_win: np.ndarray,
    sqrt_kl: Sequence[float] | None = None,
    per_prompt_kl: np.ndarray | None = None,
    form: str = "rl",
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """Fit with bootstrap intervals over prompts.

    per_prompt_win: (C, N) per-prompt win rates of C checkpoints on the same N prompts;
    ref_per_prompt_win: (N,) those of the reference policy; give either sqrt_kl (C,) fixed, or
    per_prompt_kl (C, N) (per-prompt KL estimates, resampled with the prompts; d = sqrt(max(mean, 0))).
    Returns the point fit plus alpha_ci, beta_ci (percentile intervals), alpha_se, beta_se, n_boot.
    """
    W = np.atleast_2d(np.asarray(per_prompt_win, dtype=np.float64))  # (C, N)
    w0 = np.asarray(ref_per_prompt_win, dtype=np.float64)  # (N,)
    if (sqrt_kl is None) == (per_prompt_kl is None):
        raise ValueError("give exactly one of sqrt_kl and per_prompt_kl")
    K = None if per_prompt_kl is None else np.atleast_2d(np.asarray(per_prompt_kl, dtype=np.float64))

    def d_of(idx):
        if K is None:
            return np.asarray(sqrt_kl, dtype=np.float64)
        return np.sqrt(np.maximum(K[:, idx].mean(axis=1), 0.0))

    full = np.arange(W.shape[1])
    point = _fit(d_of(full), W.mean(axis=1) - w0.mean(), form)
    rng = np.random.default_rng(seed)
    coefs = np.empty((n_boot, 2))
    for b in range(n_boot):
        idx = rng.integers(0, W.shape[1], size=W.shape[1])
        f = _fit(d_of(idx), W[:, idx].mean(axis=1) - w0[idx].mean(), form)
        coefs[b] = f["alpha"], f["beta"]
    lo, hi = (1 - ci) / 2, 1 - (1 - ci) / 2
    qa, qb = np.quantile(coefs[:, 0], [lo, hi]), np.quantile(coefs[:, 1], [lo, hi])
    return {**point, "alpha_ci": [float(qa[0]), float(qa[1])], "beta_ci": [float(qb[0]), float(qb[1])],
            "alpha_se": float(coefs[:, 0].std(ddof=1)), "beta_se": float(coefs[:, 1].std(ddof=1)),
            "ci": ci, "n_boot": n_boot, "boot": coefs}


def fit_results(results: Sequence[dict], ref_result: dict, form: str = "rl", n_boot: int = 1000,
                seed: int = 0, kl: str = "k1") -> dict:
    """Bootstrap fit from saved evaluation results (`evaluate_policy` outputs / RUN/eval/*.json, all on
    the same prompts): per_prompt win and per_prompt `kl` ("k1" | "k3")."""
    W = np.array([r["per_prompt"]["win"] for r in results])
    K = np.array([r["per_prompt"][kl] for r in results])
    out = bootstrap_fit(W, np.array(ref_result["per_prompt"]["win"]), per_prompt_kl=K, form=form,
                        n_boot=n_boot, seed=seed)
    out["kl_estimator"] = kl
    return out
