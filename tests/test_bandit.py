"""Section 3.2's bandit: the module's autograd cosines against an independent numpy computation."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
from click.testing import CliRunner

from isdaa.analysis.bandit import default_betas, gradient_cosines, run_bandit
from isdaa.cli.analysis import bandit

Q = np.array([0.5, 0.1, 0.1, 0.3])  # pi_ref
R = np.array([0.5, 1.0, 0.0, 0.0])


def numpy_cosines(beta: float, clip: float | None = None) -> tuple[float, float]:
    """By hand, with theta the logits of pi_theta = pi* = softmax(log q + r / beta), l = log p - log q:
    grad_theta log p_i = e_i - p, so grad KL = J l with J = diag(p) - p p^T (the "+1" term vanishes, J 1 = 0);
    grad 1/2 (l_i - l_j)^2 = (l_i - l_j)(e_i - e_j), hence
    grad mu = sum_ij q_i q_j (l_i - l_j)(e_i - e_j),
    grad mu_IS = the same sum with the weight min(p_i p_j / (q_i q_j), e^(2 eps))."""
    z = np.log(Q) + R / beta
    p = np.exp(z - z.max())
    p /= p.sum()
    l = np.log(p) - np.log(Q)
    g_kl = (np.diag(p) - np.outer(p, p)) @ l
    g_mu, g_is = np.zeros(4), np.zeros(4)
    for i in range(4):
        for j in range(4):
            step = (l[i] - l[j]) * (np.eye(4)[i] - np.eye(4)[j])
            w = p[i] * p[j] / (Q[i] * Q[j])
            if clip is not None:
                w = min(w, np.exp(2 * clip))
            g_mu += Q[i] * Q[j] * step
            g_is += Q[i] * Q[j] * w * step

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    return cos(g_kl, g_mu), cos(g_kl, g_is)


def test_exact_cosines_match_numpy_and_theorem_1():
    rows = run_bandit()
    assert [r["beta"] for r in rows] == pytest.approx(list(np.linspace(0.05, 1.0, 20)))
    for row in rows:
        cos_mu, cos_is = numpy_cosines(row["beta"])
        assert row["cos_kl_mu"] == pytest.approx(cos_mu, abs=1e-10)
        assert row["cos_kl_mu_is"] == pytest.approx(1.0, abs=1e-12)  # Theorem 1, unclipped
        assert cos_is == pytest.approx(1.0, abs=1e-12)


def test_plain_cosine_falls_as_beta_falls():
    """Figure 2: cos(grad KL, grad mu) decreases monotonically as beta decreases, and turns negative."""
    cos_mu = [numpy_cosines(b)[0] for b in default_betas()]  # increasing beta
    assert all(a < b for a, b in itertools.pairwise(cos_mu))
    assert cos_mu[0] < 0 < cos_mu[-1]
    assert [r["cos_kl_mu"] for r in run_bandit()] == pytest.approx(cos_mu, abs=1e-10)


def test_clipped_weights_match_numpy():
    for beta in (0.1, 0.2, 0.5):
        row = gradient_cosines(beta, clip=0.25)
        assert row["cos_kl_mu_is"] == pytest.approx(numpy_cosines(beta, clip=0.25)[1], abs=1e-10)
        assert row["weight_max"] <= np.exp(0.5) + 1e-12
    assert gradient_cosines(0.2, clip=0.25)["cos_kl_mu_is"] < 0.999  # clipping biases it away from 1


def test_monte_carlo_estimates_are_seeded_and_close():
    a = run_bandit([0.3, 1.0], samples=20000, seed=7)
    b = run_bandit([0.3, 1.0], samples=20000, seed=7)
    assert a == b
    for row in a:
        cos_mu, _ = numpy_cosines(row["beta"])
        assert row["cos_kl_mu"] == pytest.approx(cos_mu, abs=0.05)
        assert row["cos_kl_mu_is"] > 0.98


def test_cli_writes_csv_and_png(tmp_path):
    result = CliRunner().invoke(bandit, ["--out", str(tmp_path), "--num-betas", "3"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "bandit.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["beta"]) for r in rows] == pytest.approx([0.05, 0.525, 1.0])
    assert {"beta", "cos_kl_mu", "cos_kl_mu_is"} <= set(rows[0])
    assert float(rows[0]["cos_kl_mu"]) == pytest.approx(numpy_cosines(0.05)[0], abs=1e-10)
    assert (tmp_path / "bandit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cos_kl_mu_is" in result.output
