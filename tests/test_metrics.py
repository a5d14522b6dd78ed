"""Pure metrics against hand-built cases and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def test_win_rate_with_ties():
    """3 prompts, 2 samples each; chosen rewards [1, 2, 0].
    prompt 0: samples 2 (win), 1 (tie)   -> 0.75
    prompt 1: samples 0 (loss), 3 (win)  -> 0.5
    prompt 2: samples 0 (tie), 0 (tie)   -> 0.5
    WR = (0.75 + 0.5 + 0.5) / 3 = 0.58333; per-prompt sd = sqrt(((1/6)^2 + 2 (1/12)^2) / 2) = 0.144338,
    se = 0.144338 / sqrt(3) = 0.083333; tie rate 3/6."""
    from isdaa.evaluate.metrics import win_rate

    out = win_rate([2, 1, 0, 3, 0, 0], [1, 2, 0], [0, 0, 1, 1, 2, 2])
    assert out["win_rate"] == pytest.approx(0.58333333)
    assert out["se"] == pytest.approx(1 / 12)
    assert out["tie_rate"] == pytest.approx(0.5)
    np.testing.assert_allclose(out["per_prompt"], [0.75, 0.5, 0.5])
    assert (out["n_prompts"], out["n_samples"]) == (3, 6)


def test_kl_estimates_hand_values():
    """l = [0, log 2]: k1 = log(2)/2; k3 terms: 0 and (1/2 - 1 + log 2) -> k3 = (log 2 - 1/2)/2."""
    from isdaa.evaluate.metrics import kl_estimates

    out = kl_estimates([0.0, math.log(2)], [0.0, 0.0])
    assert out["k1"] == pytest.approx(math.log(2) / 2)
    assert out["k3"] == pytest.approx((math.log(2) - 0.5) / 2)
    assert out["sqrt_k1"] == pytest.approx(math.sqrt(math.log(2) / 2))
    neg = kl_estimates([-1.0], [0.0])
    assert neg["k1"] == -1.0 and neg["sqrt_k1"] == 0.0  # sqrt of max(k, 0)
    assert neg["k3"] == pytest.approx(math.e - 2) and neg["k3"] >= 0


class BigramLM(torch.nn.Module):
    """Next-token logits depend only on the current token: logits = table[input_ids]. Vocab {0: pad/BOS,
    1: 'a', 2: 'b'}; from any token, p(a) = p_a (so sequences of fixed length L have closed-form KL)."""

    def __init__(self, p_a: float):
        super().__init__()
        row = torch.tensor([-1e4, math.log(p_a), math.log(1 - p_a)])
        self.table = torch.nn.Parameter(row.repeat(3, 1))

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_response_logps_and_kl_converge_to_closed_form():
    """Responses of L = 3 tokens over {a, b}; per step pi_theta(a) = 0.7, pi_ref(a) = 0.4.
    Exact KL = L * (0.7 log(0.7/0.4) + 0.3 log(0.3/0.6)) = 3 * 0.183809 = 0.551426. score_responses on all
    8 sequences must match the enumeration; k1 and k3 from 20k samples of pi_theta within 4 se."""
    from isdaa.evaluate.metrics import kl_estimates
    from isdaa.logprobs import score_responses

    L, p, q = 3, 0.7, 0.4
    exact = L * (p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    seqs = [[1 + ((k >> t) & 1) for t in range(L)] for k in range(2 ** L)]
    prompts = [[0]] * len(seqs)
    lp_t = score_responses(BigramLM(p), prompts, seqs, batch_size=3)
    lp_r = score_responses(BigramLM(q), prompts, seqs, batch_size=8)
    n_a = np.array([s.count(1) for s in seqs])
    np.testing.assert_allclose(lp_t, n_a * math.log(p) + (L - n_a) * math.log(1 - p), atol=1e-5)
    np.testing.assert_allclose(lp_r, n_a * math.log(q) + (L - n_a) * math.log(1 - q), atol=1e-5)
    assert float(np.sum(np.exp(lp_t) * (lp_t - lp_r))) == pytest.approx(exact, abs=1e-5)

    rng = np.random.default_rng(0)
    draw = rng.choice(len(seqs), size=20000, p=np.exp(lp_t) / np.exp(lp_t).sum())
    out = kl_estimates(lp_t[draw], lp_r[draw])
    assert abs(out["k1"] - exact) < 4 * out["k1_se"]
    assert abs(out["k3"] - exact) < 4 * out["k3_se"]
    assert out["k1_se"] < 0.01 and out["k3_se"] < 0.02


def test_response_logps_temperature():
    """Tempered log-probs: softmax(logits / T) per step."""
    from isdaa.logprobs import score_responses

    lp = score_responses(BigramLM(0.7), [[0]], [[1, 2]], temperature=0.5)
    pa = 0.7 ** 2 / (0.7 ** 2 + 0.3 ** 2)
    assert lp[0] == pytest.approx(math.log(pa) + math.log(1 - pa), abs=1e-5)
