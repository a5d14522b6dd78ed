"""isdaa.importance: weights and diagnostics against hand values, and the bandit / toy agreeing with it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from isdaa import importance
from isdaa.analysis import toy
from isdaa.analysis.bandit import gradient_cosines
from isdaa.losses import OPTION_DEFAULTS, preference_loss


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def test_clip_boundary_at_two_eps():
    """eps = 0.5, 2 eps = 1. Joint log-ratios: 0.75 (below: w = e^0.75, unclipped), exactly 1.0 (w = e^1),
    1.5 and 30 (above: w = e^1 exactly, clipped). clip_frac = 2/4 (1.0 itself is not clipped)."""
    pc, pr = t(-1.0, -1.0, -1.0, -1.0), t(-2.0, -2.0, -2.0, -2.0)
    bc = t(-1.5, -1.5, -2.0, -30.0)   # chosen log-ratios 0.5, 0.5, 1.0, 29.0
    br = t(-2.25, -2.5, -2.5, -3.0)   # rejected log-ratios 0.25, 0.5, 0.5, 1.0
    log_ratio = importance.log_ratios(pc, pr, bc, br)
    assert torch.equal(log_ratio, t(0.75, 1.0, 1.5, 30.0))
    w = importance.log_weights(pc, pr, bc, br, eps=0.5).exp()
    e1 = torch.tensor(1.0).exp()
    assert w[0] == torch.tensor(0.75).exp() and w[0] < e1
    assert w[1] == e1 and w[2] == e1 and w[3] == e1
    assert importance.clip_fraction(log_ratio, 0.5).item() == 0.5
    assert importance.clip_fraction(log_ratio, None).item() == 0.0
    assert torch.equal(importance.clip_log_weights(log_ratio, None), log_ratio)


def test_weights_are_detached():
    pc = torch.tensor([-1.0, -2.0], requires_grad=True)
    log_w = importance.log_weights(pc, pc * 2, t(-1.0, -1.0), t(-1.0, -1.0), eps=5.0)
    assert not log_w.requires_grad


def test_self_normalized_and_length_normalized():
    """Self-normalized weights average exactly 1; length-normalized log-ratios are (c - b_c)/|c| + (r - b_r)/|r|:
    pair 0: (-1 + 3)/2 + (-4 + 2)/4 = 1 - 0.5 = 0.5; pair 1: (-2 + 2)/1 + (-1 + 4)/3 = 1."""
    gen = torch.Generator().manual_seed(4)
    pc, pr, bc, br = (-10 * torch.rand(6, generator=gen) for _ in range(4))
    w = importance.log_weights(pc, pr, bc, br, eps=100.0, self_normalized=True).exp()
    assert w.mean().item() == pytest.approx(1.0, rel=1e-6)
    log_w = importance.log_weights(t(-1.0, -2.0), t(-4.0, -1.0), t(-3.0, -2.0), t(-2.0, -4.0), eps=100.0,
                                   length_normalize=True, chosen_lengths=t(2.0, 1.0), rejected_lengths=t(4.0, 3.0))
    assert log_w.tolist() == pytest.approx([0.5, 1.0], rel=1e-6)


def test_ess_values():
    """ESS = (sum w)^2 / (B sum w^2): [1, 0] -> 1/2; [1, 2, 3] -> 36 / (3 * 14) = 6/7; equal weights -> 1."""
    assert importance.ess(t(1.0, 0.0)).item() == pytest.approx(0.5)
    assert importance.ess(t(1.0, 2.0, 3.0)).item() == pytest.approx(6 / 7, rel=1e-6)
    assert importance.ess(torch.full((9,), 3.7)).item() == pytest.approx(1.0, rel=1e-6)
    assert importance.ess(t(1e30, 1e-30, 1.0)).item() == pytest.approx(1 / 3, rel=1e-5)  # no overflow
    assert importance.ess_from_log(torch.log(t(1.0, 2.0, 3.0))).item() == pytest.approx(6 / 7, rel=1e-6)
    assert importance.ess_from_log(t(-1e4, 0.0)).item() == pytest.approx(0.5)  # exp underflows, no NaN
    assert importance.ess_from_sums(torch.tensor(6.0), torch.tensor(14.0), 3).item() == pytest.approx(6 / 7)


def test_top_share_values():
    """max w / sum w: [1, 2, 3, 4] -> 4/10; equal weights -> 1/B; one dominant weight e^50 among three
    of 1 -> 1 / (1 + 3 e^-50) ~ 1 (computed in log space, no overflow)."""
    assert importance.top_share(torch.log(t(1.0, 2.0, 3.0, 4.0))).item() == pytest.approx(0.4, rel=1e-6)
    assert importance.top_share(torch.zeros(8)).item() == pytest.approx(1 / 8, rel=1e-6)
    assert importance.top_share(t(50.0, 0.0, 0.0, 0.0)).item() == pytest.approx(1.0, rel=1e-6)


def test_importance_stats_by_hand():
    """Log-ratios 0, log 3 (float64), eps = 0.25 (2 eps = 0.5): weights 1, e^0.5 = 1.6487212707.
    weight_mean 1.3243606354, clip_frac 1/2, ess = (1 + e^.5)^2 / (2 (1 + e)) = 7.0157 / 7.4366 = 0.94340...,
    top_share e^.5 / (1 + e^.5) = 0.6224593312, log_ratio_mean log(3)/2, ratio_mean_log log 2 (mean of 1, 3)."""
    pc, pr = torch.tensor([-1.0, -2.0 + math.log(3)], dtype=torch.float64), torch.tensor([-3.0, -3.0],
                                                                                         dtype=torch.float64)
    bc, br = torch.tensor([-1.0, -2.0], dtype=torch.float64), pr.clone()
    s = importance.importance_stats(pc, pr, bc, br, {**OPTION_DEFAULTS, "is_clip": 0.25})
    e = math.exp(0.5)
    assert s["weight_mean"] == pytest.approx((1 + e) / 2, rel=1e-12)
    assert s["weight_max"] == pytest.approx(e, rel=1e-12)
    assert s["clip_frac"] == 0.5
    assert s["ess"] == pytest.approx((1 + e) ** 2 / (2 * (1 + e * e)), rel=1e-12)
    assert s["top_share"] == pytest.approx(e / (1 + e), rel=1e-12)
    assert s["log_ratio_mean"] == pytest.approx(math.log(3) / 2, rel=1e-12)
    assert s["ratio_mean_log"] == pytest.approx(math.log(2), rel=1e-12)
    assert s["logps_chosen"] == pytest.approx((-1.0 - 2.0 + math.log(3)) / 2, rel=1e-12)
    assert s["logps_rejected"] == -3.0 and s["n_pairs"] == 2
    assert all(isinstance(v, (int, float)) for v in s.values())


@pytest.mark.parametrize("beta, clip", [(0.3, None), (0.3, 0.5), (0.1, 1.0)])
def test_bandit_weights_agree_with_numpy(beta, clip):
    """The bandit's largest weight over the 16 pairs: max_ij min(p_i p_j / (q_i q_j), e^(2 eps)), p = pi*."""
    q, r = np.array([0.5, 0.1, 0.1, 0.3]), np.array([0.5, 1.0, 0.0, 0.0])
    p = q * np.exp(r / beta)
    p /= p.sum()
    w = np.outer(p, p) / np.outer(q, q)
    if clip is not None:
        w = np.minimum(w, np.exp(2 * clip))
    assert gradient_cosines(beta, clip=clip)["weight_max"] == pytest.approx(w.max(), rel=1e-12)


def test_toy_is_loss_agrees_with_numpy():
    """pair_loss(weighted) = mean_i min(exp(l1 + l2), e^(2 eps)) * 1/2 (l1 - l2)^2 with the Gaussian and
    mixture densities written out in numpy."""
    cfg = toy.ToyConfig(clip=0.5)
    ref = toy.ref_distribution(cfg)
    policy = toy.GaussianPolicy((0.5, 1.0), 0.8)
    gen = torch.Generator().manual_seed(0)
    y1, y2 = toy.draw_samples(ref, 64, gen), toy.draw_samples(ref, 64, gen)

    def log_ref(y):
        comps = [-((y - np.array(m)) ** 2).sum(1) / (2 * cfg.mode_std**2) - np.log(2 * np.pi * cfg.mode_std**2)
                 for m in cfg.modes]
        return np.logaddexp(*comps) - np.log(len(cfg.modes))

    def log_pi(y):
        d = y - np.array([0.5, 1.0])
        return -(d**2).sum(1) / (2 * 0.64) - np.log(2 * np.pi * 0.64)

    a, b = y1.numpy(), y2.numpy()
    l1, l2 = log_pi(a) - log_ref(a), log_pi(b) - log_ref(b)
    expect = np.mean(np.minimum(np.exp(l1 + l2), np.exp(1.0)) * 0.5 * (l1 - l2) ** 2)
    got = toy.pair_loss(policy, ref, y1, y2, weighted=True, clip=0.5).item()
    assert got == pytest.approx(expect, rel=1e-10)


def test_importance_stats_are_the_trainers_is_metrics():
    """The lab's Figure 6 statistics and the loss's is/* metrics come from one computation: for every
    combination of the IS options they agree (hand values above pin the formulas)."""
    gen = torch.Generator().manual_seed(7)
    pc, pr, bc, br = (-8 * torch.rand(10, generator=gen) for _ in range(4))
    lengths = {"chosen_lengths": torch.arange(1.0, 11), "rejected_lengths": torch.arange(3.0, 13)}
    for self_norm in (False, True):
        for length_norm in (False, True):
            options = {**OPTION_DEFAULTS, "is_clip": 0.5, "is_self_normalize": self_norm,
                       "is_length_normalize": length_norm}
            stats = importance.importance_stats(pc, pr, bc, br, options, **lengths)
            out = preference_loss("is-dpo", 0.1, pc, pr, bc, br, behavior_chosen_logps=bc, behavior_rejected_logps=br,
                                  **lengths, **{k: v for k, v in options.items() if k.startswith("is_")})
            for key in ("weight_mean", "weight_max", "clip_frac", "ess", "top_share"):
                assert out.metrics[f"is/{key}"].item() == pytest.approx(stats[key], rel=1e-6), key
