"""Section 3.2 / Figure 2: does the weighted squared loss regularize like KL(pi_theta || pi_ref)?

A 4-arm bandit: pi_ref = [0.5, 0.1, 0.1, 0.3], r = [0.5, 1, 0, 0]. For each beta, pi_theta = pi*
(proportional to pi_ref * exp(r / beta)) is a softmax over learnable logits theta (4,). With
l(a) = log pi_theta(a)/pi_ref(a) and rho = l(a1) - l(a2) for a pair (a1, a2) ~ pi_ref x pi_ref:

    mu    = E[ 1/2 rho^2 ]                 (offline weighted squared loss, Eq. 7)
    mu_IS = E[ w * 1/2 rho^2 ],  w = min(pi_theta(a1) pi_theta(a2) / (pi_ref(a1) pi_ref(a2)), e^(2 eps)),
            detached (the joint ratio of both actions, isdaa.importance.log_weights)

We report cos(grad KL, grad mu) and cos(grad KL, grad mu_IS), gradients w.r.t. theta by float64 autograd.
Exact expectations sum over the 16 ordered pairs; with `samples` they are Monte-Carlo means over N pairs.
Theorem 1: without clipping, E[w grad 1/2 rho^2] = 2 grad KL, so the IS cosine is exactly 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from isdaa import importance

PI_REF = (0.5, 0.1, 0.1, 0.3)
REWARD = (0.5, 1.0, 0.0, 0.0)
COLUMNS = ("beta", "kl", "weight_max", "cos_kl_mu", "cos_kl_mu_is")


def default_betas(n: int = 20) -> list[float]:
    """The grid of Figure 2: n evenly spaced values over [0.05, 1.0] (step 0.05 for n = 20)."""
    return [round(float(b), 6) for b in np.linspace(0.05, 1.0, n)]


def optimal_logits(beta: float, pi_ref=PI_REF, reward=REWARD) -> torch.Tensor:
    """Logits of pi* (Eq. 4): log pi_ref + r / beta, float64 (4,)."""
    log_ref = torch.log(torch.tensor(pi_ref, dtype=torch.float64))
    return log_ref + torch.tensor(reward, dtype=torch.float64) / beta


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


def gradient_cosines(
    beta: float, *, clip: float | None = None, samples: int | None = None,
    generator: torch.Generator | None = None, pi_ref=PI_REF, reward=REWARD,
) -> dict[str, float]:
    """One row of Figure 2 at this beta: kl, the largest joint ratio over pairs, and both cosines."""
    log_ref = torch.log(torch.tensor(pi_ref, dtype=torch.float64))  # (K,)
    theta = optimal_logits(beta, pi_ref, reward).requires_grad_(True)  # (K,)
    log_p = torch.log_softmax(theta, 0)
    l = log_p - log_ref  # (K,) log-ratio per arm
    kl = (log_p.exp() * l).sum()

    k = len(pi_ref)
    if samples is None:  # exact: all K*K ordered pairs, probability pi_ref(a1) pi_ref(a2)
        a1, a2 = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
        a1, a2 = a1.reshape(-1), a2.reshape(-1)
        prob = (log_ref[a1] + log_ref[a2]).exp()
    else:  # Monte Carlo: N pairs drawn from pi_ref x pi_ref, each of weight 1/N
        a1, a2 = torch.multinomial(log_ref.exp().expand(2, k), samples, replacement=True, generator=generator)
        prob = torch.full((samples,), 1.0 / samples, dtype=torch.float64)
    rho = l[a1] - l[a2]  # (P,)
    log_w = importance.log_weights(log_p[a1], log_p[a2], log_ref[a1], log_ref[a2], clip)  # pi_b = pi_ref
    mu = (prob * 0.5 * rho**2).sum()
    mu_is = (prob * log_w.exp() * 0.5 * rho**2).sum()

    g_kl, g_mu, g_mu_is = (torch.autograd.grad(f, theta, retain_graph=True)[0] for f in (kl, mu, mu_is))
    return {
        "beta": float(beta),
        "kl": float(kl.detach()),
        "weight_max": float(log_w.max().exp()),
        "cos_kl_mu": _cos(g_kl, g_mu),
        "cos_kl_mu_is": _cos(g_kl, g_mu_is),
    }


def run_bandit(
    betas=None, *, clip: float | None = None, samples: int | None = None, seed: int = 0,
) -> list[dict[str, float]]:
    """Figure 2's curves: one row per beta (default grid), exact or Monte-Carlo with an explicit seed."""
    generator = torch.Generator().manual_seed(seed)
    return [
        gradient_cosines(b, clip=clip, samples=samples, generator=generator)
        for b in (default_betas() if betas is None else betas)
    ]


def format_table(rows: list[dict[str, float]]) -> str:
    """Plain aligned text table of the rows."""
    lines = ["".join(f"{c:>14}" for c in COLUMNS)]
    for row in rows:
        cells = (f"{row[c]:>14.4g}" if c == "weight_max" else f"{row[c]:>14.4f}" for c in COLUMNS)
        lines.append("".join(cells))
    return "\n".join(lines)


def plot_bandit(rows: list[dict[str, float]], path: str | Path) -> None:
    """Figure 2: both cosines against beta, saved as a PNG (matplotlib imported lazily, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from isdaa.io import atomic_path

    betas = [r["beta"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(betas, [r["cos_kl_mu"] for r in rows], "o-", label=r"$\cos(\nabla KL, \nabla \mu)$")
    ax.plot(betas, [r["cos_kl_mu_is"] for r in rows], "s-", label=r"$\cos(\nabla KL, \nabla \mu_{IS})$")
    ax.axhline(0.0, color="gray", lw=0.5)
    ax.set_xlabel(r"$\beta$")
    ax.set_ylabel("cosine similarity")
    ax.set_ylim(min(-0.1, math.floor(min(r["cos_kl_mu"] for r in rows) * 10) / 10), 1.05)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
