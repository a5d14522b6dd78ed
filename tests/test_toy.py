"""Figure 1's toy: the gradient identities it relies on, the measured qualitative claim, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from isdaa.analysis.toy import (
    MODE_STD,
    GaussianPolicy,
    ToyConfig,
    draw_samples,
    pair_loss,
    ref_distribution,
    run_toy,
)
from isdaa.cli.analysis import toy


def _grad(policy, loss):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(policy.parameters()))])


@pytest.mark.parametrize("setting", ["on-policy", "is"])
def test_detached_samples_give_twice_the_kl_gradient(setting):
    """Eq. 8 (on-policy, samples held fixed) and Theorem 1 (pi_ref samples with the joint ratio): the mean
    gradient of 1/2 rho^2 is 2 grad KL(pi_theta || pi_ref). Checked against the closed-form Gaussian KL with a
    one-component pi_ref, pi_theta narrower than it (finite-variance weights), 100k pairs."""
    cfg = ToyConfig(modes=((0.5, -0.3),), clip=None)
    ref = ref_distribution(cfg)
    policy = GaussianPolicy((0.2, 0.1), 0.45)
    with torch.no_grad():
        policy.off_diag.fill_(0.1)
    ref_gauss = torch.distributions.MultivariateNormal(
        torch.tensor([0.5, -0.3], dtype=torch.float64), MODE_STD**2 * torch.eye(2, dtype=torch.float64)
    )
    g_kl = _grad(policy, torch.distributions.kl_divergence(policy.dist(), ref_gauss))
    n = 100_000
    source = policy.dist() if setting == "on-policy" else ref
    y = draw_samples(source, 2 * n, torch.Generator().manual_seed(0))
    g = _grad(policy, pair_loss(policy, ref, y[:n], y[n:], weighted=setting == "is", clip=None))
    cos = torch.dot(g, g_kl) / (g.norm() * g_kl.norm())
    assert cos.item() > 0.995
    assert g.norm().item() == pytest.approx(2 * g_kl.norm().item(), rel=0.05)


def test_on_policy_and_is_stay_in_support_off_policy_drifts():
    """Measured claim (seed 0, 150 steps x 128 pairs, IS clipped at eps = 1): on-policy and IS both settle on
    one mode of pi_ref (KL ~ log 2, the best single Gaussian on one of two equal well-separated modes),
    while off-policy spreads its mass between and beyond the modes, with a much larger KL."""
    results = {r["setting"]: r for r in run_toy(ToyConfig(steps=150, pairs=128, kl_samples=4000))}
    kl_on, kl_off, kl_is = (results[s]["kl"] for s in ("on-policy", "off-policy", "is"))
    assert kl_on == pytest.approx(math.log(2), abs=0.1)
    assert kl_is == pytest.approx(math.log(2), abs=0.1)
    assert kl_off > 2 * max(kl_on, kl_is)
    assert abs(results["off-policy"]["mean"][0]) < 1.0  # between the modes at x = +-2


def test_cli_writes_png_and_prints_kls(tmp_path):
    result = CliRunner().invoke(toy, ["--out", str(tmp_path), "--steps", "5", "--pairs", "16", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert [r["setting"] for r in saved["results"]] == ["on-policy", "off-policy", "is"]
    for r in saved["results"]:
        assert f"{r['kl']:.4f}" in result.output
