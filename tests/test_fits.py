"""Gao et al. curve fits recover known coefficients; bootstrap intervals cover them."""

from __future__ import annotations

import numpy as np
import pytest


def test_rl_and_bon_fits_recover_exact_coefficients():
    from isdaa.evaluate.fits import fit_gao_bon, fit_gao_rl, gao_curve

    d = np.array([0.0, 0.3, 0.7, 1.0, 1.5, 2.2, 3.0])
    rl = fit_gao_rl(d, d * (0.4 - 0.25 * np.log(np.where(d > 0, d, 1))))
    assert rl["alpha"] == pytest.approx(0.4, abs=1e-10) and rl["beta"] == pytest.approx(0.25, abs=1e-10)
    bon = fit_gao_bon(d, d * (0.5 - 0.2 * d))
    assert bon["alpha"] == pytest.approx(0.5, abs=1e-10) and bon["beta"] == pytest.approx(0.2, abs=1e-10)
    assert gao_curve(0.0, 1.0, 1.0, "rl")[0] == 0.0  # R(0) = 0 in both forms
    assert gao_curve(2.0, 0.5, 0.2, "bon")[0] == pytest.approx(2 * (0.5 - 0.4))


def test_fit_with_noise_is_close():
    from isdaa.evaluate.fits import fit_gao_rl

    rng = np.random.default_rng(0)
    d = np.linspace(0.1, 3, 40)
    r = d * (0.3 - 0.2 * np.log(d)) + rng.normal(0, 0.01, size=40)
    f = fit_gao_rl(d, r)
    assert f["alpha"] == pytest.approx(0.3, abs=0.02) and f["beta"] == pytest.approx(0.2, abs=0.02)


def test_bootstrap_over_prompts_covers_truth():
    """Per-prompt wins ~ Bernoulli(p_c) with p_c = 0.5 + R(d_c) (bon form, alpha 0.3, beta 0.1); the
    reference at 0.5; 2000 prompts. The 95% intervals contain the truth and the point fit is close."""
    from isdaa.evaluate.fits import bootstrap_fit

    rng = np.random.default_rng(1)
    d = np.array([0.5, 1.0, 1.5, 2.0, 2.5])
    p = 0.5 + d * (0.3 - 0.1 * d)
    W = (rng.random((5, 2000)) < p[:, None]).astype(float)
    ref = (rng.random(2000) < 0.5).astype(float)
    out = bootstrap_fit(W, ref, sqrt_kl=d, form="bon", n_boot=300, seed=0)
    assert out["alpha_ci"][0] < 0.3 < out["alpha_ci"][1]
    assert out["beta_ci"][0] < 0.1 < out["beta_ci"][1]
    assert out["alpha_se"] > 0 and out["boot"].shape == (300, 2)
    K = np.repeat((d ** 2)[:, None], 2000, axis=1)  # per-prompt KL, constant: same d as above
    out2 = bootstrap_fit(W, ref, per_prompt_kl=K, form="bon", n_boot=50, seed=0)
    assert out2["alpha"] == pytest.approx(out["alpha"]) and out2["beta"] == pytest.approx(out["beta"])
