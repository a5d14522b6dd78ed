"""sequence_logps and the response-only head (response_logps) against a naive per-token loop (values
and gradients, float64), masking without NaN, the fused head backward, LoRA models."""

import math
import types

import pytest
import torch

from isdaa.logprobs import (
    causal_lm_logps,
    response_head_supported,
    response_logps,
    sequence_logps,
    token_logps,
)


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


# ---------------------------------------------------------------- response-only LM head on a model
# response_logps projects only the positions that predict a response token; it must equal the naive
# per-token loop over the model's full logits, in values and in every parameter's gradient.

def _tiny(tiny_dir, lora=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).double().train()
    if lora:
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                                           target_modules=["q_proj", "v_proj", "lm_head"]))
        model = model.double()
    return model, tok


def _pref_batch(tok):
    """Concatenated chosen/rejected batch (rows [0, B) chosen, [B, 2B) rejected) with padding, prompts
    and responses of different lengths, and one response truncated by max_length."""
    from isdaa.data import collate_pref, tokenize_pref

    rows = [{"prompt": "w1 w2 w3", "chosen": "good yes", "rejected": "bad no w4 w5 w6 the a is"},
            {"prompt": "w7", "chosen": "good yes w8 w9 w10 w11 w12 w13 w14 w15 w16 w17", "rejected": "bad"},
            {"prompt": "w20 w21 w22 w23 w24 w25", "chosen": "a", "rejected": "no no"}]
    batch = collate_pref(tokenize_pref(rows, tok, max_length=14, max_prompt_length=6), tok.pad_token_id)
    assert (batch["attention_mask"] == 0).any() and len(set(batch["response_mask"].sum(-1).tolist())) > 2
    return batch


def naive_model_logps(model, batch):
    """Per-token loop over full float64 log-softmaxes of the model's logits (no masking tricks)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    ids, resp = batch["input_ids"], batch["response_mask"]
    return naive(logits[:, :-1], ids[:, 1:], resp[:, 1:].bool())


def _values_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    logps = fn()
    w = torch.linspace(-1.0, 2.0, logps.shape[0], dtype=torch.float64)  # distinct weight per row
    (logps.double() * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return logps.detach().double(), grads


@pytest.mark.parametrize("lora", [False, True])
def test_response_head_matches_naive_loop_values_and_gradients(tiny_dir, lora):
    model, tok = _tiny(tiny_dir, lora)
    batch = _pref_batch(tok)
    assert response_head_supported(model)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    expected, expected_grads = _values_and_grads(model, lambda: naive_model_logps(model, batch))
    for kw in ({"fused": True}, {"fused": False}):
        got, grads = _values_and_grads(model, lambda: response_logps(model, *args, **kw))
        assert got.dtype == torch.float64  # float64 model: float64 all the way
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        assert grads.keys() == expected_grads.keys() and grads
        for name, g in grads.items():
            torch.testing.assert_close(g, expected_grads[name], rtol=1e-9, atol=1e-11, msg=name)
    # the full-logits fallback: float32 sums of the same values
    full, full_grads = _values_and_grads(model, lambda: response_logps(model, *args, response_only_head=False))
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-5)
    for name, g in full_grads.items():
        torch.testing.assert_close(g, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_response_head_counts_and_float32_model(tiny_dir):
    """A float32 model gives float32 sums equal to the full-logits path; counts = response tokens."""
    model, tok = _tiny(tiny_dir)
    model = model.float()
    batch = _pref_batch(tok)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    with torch.no_grad():
        got, counts = response_logps(model, *args, return_counts=True)
        full, full_counts = response_logps(model, *args, response_only_head=False, return_counts=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    assert counts.tolist() == full_counts.tolist() == (batch["response_mask"][:, 1:].sum(-1)).tolist()
    n = batch["n_pairs"]
    assert counts[:n].tolist() == batch["chosen_lengths"].tolist()
    assert counts[n:].tolist() == batch["rejected_lengths"].tolist()


def test_fused_token_logps_gradient_checks():
    """The fused autograd function in float64: its Jacobian (one fresh graph per output row, since the
    backward reuses p in place) equals central finite differences and plain autograd of log_softmax;
    the values equal the plain path; a second backward through the same graph is refused."""
    logits, labels, _ = _inputs(B=6, T=1, V=13, seed=5)
    x, labels = logits[:, 0].double(), labels[:, 0].clamp(min=0)
    expected = torch.log_softmax(x, -1).gather(-1, labels[:, None]).squeeze(-1)
    rows = []
    for i in range(6):  # row i of the Jacobian d out_i / d x
        xi = x.clone().requires_grad_(True)
        torch.autograd.backward(token_logps(xi, labels, chunk=4), torch.eye(6, dtype=torch.float64)[i])
        rows.append(xi.grad)
    jac = torch.stack(rows)                                             # (6, 6, 13)
    eps, numeric = 1e-6, torch.zeros_like(jac)
    with torch.no_grad():
        for n in range(6):
            for v in range(13):
                d = torch.zeros_like(x)
                d[n, v] = eps
                numeric[:, n, v] = (token_logps(x + d, labels) - token_logps(x - d, labels)) / (2 * eps)
    torch.testing.assert_close(jac, numeric, rtol=1e-6, atol=1e-8)
    plain = torch.autograd.functional.jacobian(lambda t: torch.log_softmax(t, -1).gather(-1, labels[:, None])[:, 0], x)
    torch.testing.assert_close(jac, plain, rtol=1e-12, atol=1e-14)
    xr = x.clone().requires_grad_(True)
    torch.testing.assert_close(token_logps(xr, labels), expected)
    torch.testing.assert_close(token_logps(xr, labels, fused=False), expected)
    with torch.no_grad():
        torch.testing.assert_close(token_logps(xr, labels, chunk=4), expected)
    out = token_logps(xr, labels).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        out.backward()


def test_token_logps_rows_score_several_labels_per_row():
    """`rows`: one logits row scoring several labels (a packed pair's last prompt position) gives, in float64,
    the values and gradients of plain autograd through log_softmax of the rows copied out one per label,
    for the fused path, the unfused one and without a graph."""
    logits, labels, _ = _inputs(B=5, T=1, V=11, seed=7)
    x = logits[:, 0].double()
    rows = torch.tensor([0, 2, 2, 4, 1, 2, 0])
    lab = torch.tensor([3, 0, 10, 5, 5, 7, 3])                       # row 2 thrice, row 0 twice (same label)
    g = torch.linspace(-1.0, 2.0, 7, dtype=torch.float64)
    ref = x.clone().requires_grad_(True)
    expected = torch.log_softmax(ref[rows], -1).gather(-1, lab[:, None]).squeeze(-1)
    (expected * g).sum().backward()
    for fused in (True, False):
        xi = x.clone().requires_grad_(True)
        got = token_logps(xi, lab, rows=rows, fused=fused, chunk=2)
        torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-14)
        (got * g).sum().backward()
        torch.testing.assert_close(xi.grad, ref.grad, rtol=1e-12, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(token_logps(x, lab, rows=rows, chunk=2), expected.detach(), rtol=1e-12, atol=1e-14)


def test_bf16_logits_fused_in_float32():
    logits, labels, _ = _inputs(B=9, T=1, V=17, seed=6)
    x, labels = logits[:, 0].bfloat16().requires_grad_(True), labels[:, 0].clamp(min=0)
    got = token_logps(x, labels, chunk=4)
    assert got.dtype == torch.float32
    ref = x.detach().float().requires_grad_(True)
    expected = torch.log_softmax(ref, -1).gather(-1, labels[:, None]).squeeze(-1)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    got.sum().backward()
    expected.sum().backward()
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad.float(), ref.grad.bfloat16().float())


def test_support_check_unwraps_and_refuses_unknown_models(tiny_dir):
    model, _ = _tiny(tiny_dir)

    class Wrapper(torch.nn.Module):  # DDP / FSDP keep the model in `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, **kw):
            return self.module(**kw)

    assert response_head_supported(Wrapper(model))

    class NoKeep(torch.nn.Module):  # a causal LM whose forward knows no logits_to_keep
        def forward(self, input_ids, attention_mask=None, use_cache=None, **kw):
            return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, 5))

    assert not response_head_supported(NoKeep())
    ids = torch.zeros(2, 4, dtype=torch.long)
    resp = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match="logits_to_keep"):
        response_logps(NoKeep(), ids, torch.ones_like(ids), resp)
    full = response_logps(NoKeep(), ids, torch.ones_like(ids), resp, response_only_head=False)  # uniform over 5
    assert full.tolist() == pytest.approx([2 * -math.log(5), 3 * -math.log(5)])
