"""sequence_logps against a naive per-token loop (values and gradients), masking without NaN."""

import math

import torch

from isdaa.logprobs import causal_lm_logps, sequence_logps


def naive(logits, labels, mask):
    """sum_t mask * log softmax(logits[b, t])[labels[b, t]], one token at a time, float64."""
    B, T, _ = logits.shape
    out = []
    for b in range(B):
        s = torch.zeros((), dtype=torch.float64)
        for t in range(T):
            if mask[b, t]:
                s = s + torch.log_softmax(logits[b, t].double(), -1)[labels[b, t]]
        out.append(s)
    return torch.stack(out)


def _inputs(B=5, T=7, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.4
    labels[~mask] = -100  # ignored labels must not break gather
    return logits, labels, mask


def test_matches_naive_loop_for_every_chunk_size():
    logits, labels, mask = _inputs()
    expected = naive(logits, labels, mask).float()
    for chunk in (1, 2, 5, 64):
        got, counts = sequence_logps(logits, labels, mask, return_counts=True, chunk_rows=chunk)
        assert got.dtype == torch.float32 and got.shape == (5,)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert counts.tolist() == mask.sum(-1).tolist()


def test_gradient_matches_naive():
    logits, labels, mask = _inputs(seed=1)
    a = logits.clone().double().requires_grad_(True)
    b = logits.clone().double().requires_grad_(True)
    w = torch.arange(1.0, 6.0, dtype=torch.float64)
    (sequence_logps(a, labels, mask).double() * w).sum().backward()
    (naive(b, labels, mask) * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_bf16_logits_are_summed_in_float32():
    logits, labels, mask = _inputs(seed=2)
    got = sequence_logps(logits.bfloat16(), labels, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, naive(logits.bfloat16().float(), labels, mask).float(), rtol=1e-4, atol=1e-4)


def test_masked_extreme_logits_give_finite_values():
    """A -inf-like logit at a masked position (a PAD column) must not produce NaN (no 0 * -inf)."""
    logits, labels, mask = _inputs(seed=3)
    logits[~mask] = -math.inf
    logits[mask] = logits[mask].clamp(-30, 30)
    got = sequence_logps(logits, labels, mask)
    assert torch.isfinite(got).all()
    empty = sequence_logps(logits, labels, torch.zeros_like(mask))
    assert empty.tolist() == [0.0] * 5


def test_causal_shift():
    """causal_lm_logps scores input_ids[t] with logits[t-1]."""
    logits, _, _ = _inputs(B=2, T=6, V=9, seed=4)
    ids = torch.randint(0, 9, (2, 6))
    resp = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    expected = naive(logits[:, :-1], ids[:, 1:], resp[:, 1:]).float()
    torch.testing.assert_close(causal_lm_logps(logits, ids, resp), expected, rtol=1e-5, atol=1e-5)
