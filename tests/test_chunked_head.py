"""The chunked LM head (`isdaa.chunked_head`, used by `response_logps` / `pair_response_logps` beyond
`head_chunk_mb`) against plain float64 autograd through the full logits: values, WPO's log sum_v p_v^2 and
every parameter's gradient, on random tiny models of the families whose logits differ from the head's
output (Gemma 2 soft-capping, Cohere / Granite scales), tied and untied heads; the model's own head when a
family's post-processing is unknown; no (N, V) tensor kept for the backward."""

import math
import warnings

import pytest
import torch

from isdaa.chunked_head import HeadSpec, chunk_rows, chunked_token_logps, head_spec
from isdaa.logprobs import pair_response_logps, response_logps, score_responses

TINY_MB = 1e-6  # a budget below one row: every row is its own chunk


def _naive_token(hidden, weight, bias, labels, rows, spec):
    """log_softmax of the whole float64 logits, post-processed by hand, one label at a time."""
    x = hidden @ weight.T + (0 if bias is None else bias)
    z = x * spec.scale if spec.softcap is None else spec.softcap * torch.tanh(x * spec.scale / spec.softcap)
    logp = torch.log_softmax(z / spec.temperature, -1)
    return logp[rows, labels], torch.logsumexp(2 * logp, -1)


SPECS = [HeadSpec(), HeadSpec(scale=0.37), HeadSpec(softcap=1.5), HeadSpec(scale=2.0, softcap=3.0, temperature=0.7)]


@pytest.mark.parametrize("spec", SPECS, ids=["plain", "scale", "softcap", "scale-softcap-temperature"])
@pytest.mark.parametrize("bias", [False, True])
def test_function_matches_float64_autograd(spec, bias):
    """Values, log sum p^2 and the gradients of hidden, weight and bias, for chunks of 1, 3 and all rows, with
    rows scoring several labels (a packed pair's last prompt position) and rows scoring none."""
    g = torch.Generator().manual_seed(0)
    N, H, V = 7, 5, 13
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64)
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    rows = torch.tensor([0, 2, 2, 4, 1, 2, 0, 6, 5])                     # row 3 scores nothing, row 2 thrice
    labels = torch.tensor([3, 0, 12, 5, 5, 7, 3, 1, 9])
    w_out = torch.linspace(-1.0, 2.0, 9, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (hidden, weight) + ((b,) if bias else ())]
    exp_tok, exp_sq = _naive_token(*leaves[:2], leaves[2] if bias else None, labels, rows, spec)
    (exp_tok * w_out).sum().backward()
    expected = [t.grad for t in leaves]
    per_row = 2 * V * 8 / 2**20                                           # MiB of one float64 row and its dz/dx
    for budget in (per_row, 3 * per_row, 1.0):
        got = [t.clone().requires_grad_(True) for t in (hidden, weight) + ((b,) if bias else ())]
        tok, sq = chunked_token_logps(got[0], got[1], got[2] if bias else None, labels, rows, spec=spec,
                                      budget_mb=budget, with_sq=True)
        assert tok.dtype == torch.float64 and not sq.requires_grad
        torch.testing.assert_close(tok, exp_tok.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sq, exp_sq.detach(), rtol=1e-12, atol=1e-12)
        (tok * w_out).sum().backward()
        for t, e in zip(got, expected):
            torch.testing.assert_close(t.grad, e, rtol=1e-11, atol=1e-12)
        with torch.no_grad():
            tok0, _ = chunked_token_logps(hidden, weight, b, labels, rows, spec=spec, budget_mb=budget)
        torch.testing.assert_close(tok0, exp_tok.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS, ids=["plain", "scale", "softcap", "scale-softcap-temperature"])
def test_frozen_head_gradient_without_recompute(spec, monkeypatch):
    """A frozen head (only the hidden states need a gradient: LoRA on other modules) keeps (p * dz/dx) @ W from
    the forward: the hidden states' gradient equals float64 autograd's, and the backward computes no logits."""
    from isdaa import chunked_head

    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(7, 5, generator=g, dtype=torch.float64)
    weight = torch.randn(13, 5, generator=g, dtype=torch.float64)
    bias = torch.randn(13, generator=g, dtype=torch.float64)
    rows, labels = torch.tensor([0, 2, 2, 4, 1, 2, 0, 6, 5]), torch.tensor([3, 0, 12, 5, 5, 7, 3, 1, 9])
    w_out = torch.linspace(-1.0, 2.0, 9, dtype=torch.float64)
    ref = hidden.clone().requires_grad_(True)
    exp_tok, _ = _naive_token(ref, weight, bias, labels, rows, spec)
    (exp_tok * w_out).sum().backward()
    calls = []
    original = chunked_head._logits
    monkeypatch.setattr(chunked_head, "_logits", lambda *a, **k: calls.append(1) or original(*a, **k))
    got = hidden.clone().requires_grad_(True)
    per_row = 13 * 8 * (3 if spec.softcap else 2)                       # float64 logits, copy (, dz/dx): bytes
    tok, _ = chunked_token_logps(got, weight, bias, labels, rows, spec=spec, budget_mb=3 * per_row / 2**20)
    n_forward = len(calls)
    (tok * w_out).sum().backward()
    assert n_forward == 3 and len(calls) == n_forward                     # 3 chunks of 3 rows; none recomputed
    torch.testing.assert_close(tok, exp_tok.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.grad, ref.grad, rtol=1e-11, atol=1e-12)


def test_function_gradcheck():
    """torch.autograd.gradcheck (finite differences) through soft-capping, scale and bias, chunks of 2 rows."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    rows, labels = torch.tensor([0, 1, 1, 3, 4]), torch.tensor([5, 0, 2, 2, 1])
    spec = HeadSpec(scale=1.3, softcap=2.0)
    budget = 2 * 3 * 6 * 8 / 2**20                                    # 2 rows: logits, float64 copy, dz/dx
    assert chunk_rows(6, budget, torch.float64, softcap=True) == 2
    fn = lambda h, w, b: chunked_token_logps(h, w, b, labels, rows, spec=spec, budget_mb=budget)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight, bias))


def test_bf16_compute_dtype_sums_in_float32():
    """compute_dtype=bf16 (autocast's): the matmuls in bf16, log-softmax and gradients accumulated in float32;
    equal to float32 autograd through bf16-rounded logits, within bf16 round-off of the weight gradient."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(6, 8, generator=g, requires_grad=True)
    weight = torch.randn(20, 8, generator=g, requires_grad=True)
    rows, labels = torch.arange(6), torch.randint(0, 20, (6,), generator=g)
    tok, _ = chunked_token_logps(hidden, weight, None, labels, rows, compute_dtype=torch.bfloat16, budget_mb=1e-4)
    assert tok.dtype == torch.float32
    h2, w2 = hidden.detach().clone().requires_grad_(True), weight.detach().clone().requires_grad_(True)
    logits = (h2.bfloat16() @ w2.bfloat16().T).float()
    expected = torch.log_softmax(logits, -1)[rows, labels]
    torch.testing.assert_close(tok, expected, rtol=1e-6, atol=1e-6)
    tok.sum().backward()
    expected.sum().backward()
    assert weight.grad.dtype == torch.float32
    torch.testing.assert_close(hidden.grad, h2.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(weight.grad, w2.grad, rtol=2e-2, atol=2e-2)
    frozen = hidden.detach().clone().requires_grad_(True)                 # a frozen head: no recompute
    tok, _ = chunked_token_logps(frozen, weight.detach(), None, labels, rows, compute_dtype=torch.bfloat16,
                                 budget_mb=1e-4)
    tok.sum().backward()
    assert frozen.grad.dtype == torch.float32
    torch.testing.assert_close(frozen.grad, h2.grad, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------- on models of several families

def _family(name: str, tie: bool = False):
    """A random tiny float64 model of `name` whose head gives logits of a few units (so that soft-capping and
    scales matter), training mode, dropout 0."""
    import transformers as tf

    common = dict(vocab_size=37, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie, pad_token_id=0,
                  eos_token_id=1, bos_token_id=2)
    cfg, cls = {
        "llama": (lambda: tf.LlamaConfig(**common), tf.LlamaForCausalLM),
        "gemma2": (lambda: tf.Gemma2Config(**common, head_dim=8, final_logit_softcapping=2.5, query_pre_attn_scalar=8,
                                           attn_implementation="eager"), tf.Gemma2ForCausalLM),
        "cohere": (lambda: tf.CohereConfig(**common, logit_scale=0.4), tf.CohereForCausalLM),
        "granite": (lambda: tf.GraniteConfig(**common, logits_scaling=3.0), tf.GraniteForCausalLM),
    }[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(cfg())
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40)  # logits of a few units
    return model.double().train()


def _batch(B=3, T=9, V=37, seed=0):
    """A concatenated pair batch (collate_pref's layout): rows b and B + b share a prompt, right padding."""
    g = torch.Generator().manual_seed(seed)
    plen, clen, rlen = [2, 4, 1], [3, 1, 5], [2, 4, 3]
    ids = torch.zeros(2 * B, T, dtype=torch.long)
    resp = torch.zeros(2 * B, T, dtype=torch.bool)
    for b in range(B):
        prompt = torch.randint(3, V, (plen[b],), generator=g)
        for row, n in ((b, clen[b]), (B + b, rlen[b])):
            ids[row, :plen[b]] = prompt
            ids[row, plen[b]: plen[b] + n] = torch.randint(3, V, (n,), generator=g)
            resp[row, plen[b]: plen[b] + n] = True
    attn = (torch.arange(T)[None] < torch.tensor(plen * 2)[:, None] + resp.sum(-1, keepdim=True)).long()
    return ids, attn, resp


def _naive(model, ids, attn, resp):
    """(2B,) log-probs and (2B,) sums of log sum_v p_v^2 over the response tokens: full float64 log-softmax of
    the model's own logits (its post-processing included), one token at a time."""
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn, use_cache=False).logits.double(), -1)
    out, sq = [], []
    for b in range(ids.shape[0]):
        ts = [t for t in range(1, ids.shape[1]) if resp[b, t]]
        out.append(sum(logp[b, t - 1, ids[b, t]] for t in ts))
        sq.append(sum(torch.logsumexp(2 * logp[b, t - 1], -1) for t in ts).detach())
    return torch.stack(out), torch.stack(sq)


def _grads(model, logps):
    model.zero_grad(set_to_none=True)
    w = torch.linspace(-1.0, 2.0, logps.shape[0], dtype=torch.float64)  # a distinct weight per sequence
    (logps.double() * w).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rows_seen(model):
    """Rows projected by each call of the LM head (the chunked head lets it project one row: its probe)."""
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.shape[:-1].numel()))
    return seen


FAMILIES = [("llama", False), ("llama", True), ("gemma2", False), ("gemma2", True), ("cohere", True),
            ("granite", False)]


@pytest.mark.parametrize("name,tie", FAMILIES, ids=[f"{n}-{'tied' if t else 'untied'}" for n, t in FAMILIES])
def test_response_logps_chunked_equals_full_logits(name, tie):
    model = _family(name, tie)
    ids, attn, resp = _batch()
    expected, expected_sq = _naive(model, ids, attn, resp)
    expected_grads = _grads(model, expected)
    assert any("lm_head" in n or "embed_tokens" in n for n in expected_grads)
    seen = _rows_seen(model)
    got, sq = response_logps(model, ids, attn, resp, head_chunk_mb=TINY_MB, with_sq_logsumexp=True)
    assert seen == [1]                                                   # the head ran on the probe row only
    assert got.dtype == torch.float64 and sq.dtype == torch.float32 and not sq.requires_grad
    torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sq, expected_sq.float(), rtol=1e-6, atol=1e-5)
    grads = _grads(model, got)
    assert grads.keys() == expected_grads.keys()
    for n, g in grads.items():
        torch.testing.assert_close(g, expected_grads[n], rtol=1e-8, atol=1e-10, msg=n)


@pytest.mark.parametrize("name,tie", [("llama", False), ("llama", True), ("cohere", True), ("granite", False)])
def test_pair_response_logps_chunked_equals_full_logits(name, tie):
    """Packed pairs through the chunked head (the prompt's last position scores both first tokens) equal the
    packed pairs through the model's own head (today's path, the same forward) to float64 round-off, and both
    equal each concatenated row's full logits (the families' norms compute in float32 whatever the model's
    dtype, and the packed row reorders their sums: ~1e-7 relative in the gradients)."""
    model = _family(name, tie)
    ids, attn, resp = _batch(seed=1)
    expected, expected_sq = _naive(model, ids, attn, resp)
    expected_grads = _grads(model, expected)
    whole, whole_sq = pair_response_logps(model, ids, attn, resp, 3, head_chunk_mb=0, with_sq_logsumexp=True)
    whole_grads = _grads(model, whole)
    seen = _rows_seen(model)
    got, sq = pair_response_logps(model, ids, attn, resp, 3, head_chunk_mb=TINY_MB, with_sq_logsumexp=True)
    assert seen == [1]
    torch.testing.assert_close(got, whole.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sq, whole_sq, rtol=1e-6, atol=1e-6)
    grads = _grads(model, got)
    assert grads.keys() == whole_grads.keys() == expected_grads.keys()
    for n, g in grads.items():
        torch.testing.assert_close(g, whole_grads[n], rtol=1e-10, atol=1e-12, msg=n)
        scale = float(expected_grads[n].abs().max())                   # float32-norm round-off: ~2e-7 of it
        torch.testing.assert_close(g, expected_grads[n], rtol=0, atol=2e-6 * scale, msg=n)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sq, expected_sq.float(), rtol=1e-6, atol=1e-5)


def test_whole_head_below_the_budget_and_sq_on_every_path():
    """Below the budget the model's own head projects all N rows at once (no recompute); the WPO sums are the
    same on the whole-head, chunked and full-logits paths."""
    model = _family("gemma2")
    ids, attn, resp = _batch(seed=2)
    _, expected_sq = _naive(model, ids, attn, resp)
    n = int(resp[:, 1:].sum())
    seen = _rows_seen(model)
    with torch.no_grad():
        whole = response_logps(model, ids, attn, resp, with_sq_logsumexp=True)
        full = response_logps(model, ids, attn, resp, response_only_head=False, with_sq_logsumexp=True)
        chunked = response_logps(model, ids, attn, resp, head_chunk_mb=TINY_MB, with_sq_logsumexp=True)
    assert seen == [n, ids.numel(), 1]
    for logps, sq in (whole, full, chunked):
        torch.testing.assert_close(sq, expected_sq.float(), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(chunked[0], whole[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(full[0], whole[0].float(), rtol=1e-5, atol=1e-5)


def test_head_spec_reads_the_families():
    assert head_spec(_family("gemma2").config) == HeadSpec(softcap=2.5)
    assert head_spec(_family("cohere").config) == HeadSpec(scale=0.4)
    assert head_spec(_family("granite").config) == HeadSpec(scale=1 / 3.0)
    assert head_spec(_family("llama").config, temperature=0.5) == HeadSpec(temperature=0.5)


def test_unknown_post_processing_is_refused_with_the_models_own_head():
    """A family that post-processes its logits in a way the config does not declare (here: x -> 2x, in the
    forward) is caught by the probe row, warned about once, and scored with the model's own head; later
    calls skip the capture."""
    model = _family("llama")
    original = type(model).forward

    def doubled(self, *a, **kw):
        out = original(self, *a, **kw)
        out.logits = 2 * out.logits
        return out

    model.forward = doubled.__get__(model)
    ids, attn, resp = _batch(seed=3)
    expected, _ = _naive(model, ids, attn, resp)
    seen = _rows_seen(model)
    with pytest.warns(UserWarning, match="chunked LM head is off"):
        got = response_logps(model, ids, attn, resp, head_chunk_mb=TINY_MB)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=1e-10)
    n = int(resp[:, 1:].sum())
    assert seen == [1, n]                                               # the probe, then the model's own head
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = response_logps(model, ids, attn, resp, head_chunk_mb=TINY_MB)
    assert seen[2:] == [n]
    torch.testing.assert_close(again, expected.detach(), rtol=1e-10, atol=1e-10)


def test_lora_elsewhere_chunks_the_frozen_head():
    """peft LoRA on attention only: the head is frozen and chunked (no recompute); the adapters' gradients and
    the values equal plain autograd through the full logits."""
    import peft

    model = _family("gemma2")
    model = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, init_lora_weights=False,
                                                       target_modules=["q_proj", "v_proj"])).double()
    ids, attn, resp = _batch(seed=8)
    expected, _ = _naive(model, ids, attn, resp)
    expected_grads = _grads(model, expected)
    seen = _rows_seen(model.get_base_model())
    got = response_logps(model, ids, attn, resp, head_chunk_mb=TINY_MB)
    assert seen == [1]
    torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=1e-10)
    grads = _grads(model, got)
    assert grads.keys() == expected_grads.keys() and all("lora" in n for n in grads)
    for n, g in grads.items():
        torch.testing.assert_close(g, expected_grads[n], rtol=1e-8, atol=1e-10, msg=n)


def test_lora_on_the_head_uses_the_models_own_head():
    """peft LoRA on lm_head: the head is not a plain Linear, so the model's own (adapted) head runs."""
    import peft

    model = _family("llama")
    model = peft.get_peft_model(model, peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, init_lora_weights=False,
                                                       target_modules=["q_proj", "lm_head"])).double()
    ids, attn, resp = _batch(seed=4)
    expected, _ = _naive(model, ids, attn, resp)
    expected_grads = _grads(model, expected)
    got = response_logps(model, ids, attn, resp, head_chunk_mb=TINY_MB)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-10, atol=1e-10)
    grads = _grads(model, got)
    assert any("lm_head.lora" in n for n in grads)
    for n, g in grads.items():
        torch.testing.assert_close(g, expected_grads[n], rtol=1e-8, atol=1e-10, msg=n)


def test_no_vocabulary_sized_activation_is_saved_for_backward():
    """The chunked path saves hidden states, the head weight and (N,) statistics: no tensor with the vocabulary
    as last dimension and more than one row (the probe's (1, V) logits are not part of the loss graph)."""
    model = _family("llama").float()
    ids, attn, resp = _batch(seed=5)
    V, saved = model.config.vocab_size, []
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:  # views of the weights (a matmul saves W.T) are no activation
            saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked = response_logps(model, ids, attn, resp, head_chunk_mb=TINY_MB)
    big = [s for s in saved if s and s[-1] == V and math.prod(s) > V]
    assert not big, big
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        whole = response_logps(model, ids, attn, resp)
    assert any(s[-1] == V and math.prod(s) > V for s in saved if s)   # the whole head keeps (N, V) softmax
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_autocast_bf16_chunked_matches_whole_head():
    """Under CPU bf16 autocast the chunked head runs its matmuls in bf16 (as the model's head would) and its
    log-softmax in float32: values and gradients within bf16 round-off of the whole head."""
    model = _family("gemma2").float()
    ids, attn, resp = _batch(seed=6)
    out = {}
    for budget in (TINY_MB, 0):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps = response_logps(model, ids, attn, resp, head_chunk_mb=budget)
        assert logps.dtype == torch.float32
        logps.sum().backward()
        out[budget] = logps.detach(), model.lm_head.weight.grad.clone()
    torch.testing.assert_close(out[TINY_MB][0], out[0][0], rtol=2e-2, atol=5e-2)
    torch.testing.assert_close(out[TINY_MB][1], out[0][1], rtol=5e-2, atol=5e-2)


def test_score_responses_uses_the_chunked_head_with_temperature():
    """Scoring exact ids at temperature T: log softmax(spec(logits) / T), chunked, equals the full float64
    computation; the model's train/eval mode is restored."""
    model = _family("gemma2")
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 37, (n,), generator=g).tolist() for n in (2, 5, 1)]
    responses = [torch.randint(3, 37, (n,), generator=g).tolist() for n in (4, 1, 6)]
    got = score_responses(model, prompts, responses, batch_size=2, temperature=0.6, head_chunk_mb=TINY_MB)
    assert model.training
    with torch.no_grad():
        for p, r, value in zip(prompts, responses, got):
            ids = torch.tensor([p + r])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double() / 0.6, -1)
            expected = sum(float(logp[len(p) + i - 1, tok]) for i, tok in enumerate(r))
            assert value == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("ref_logps", ["precompute", "on_the_fly"])
def test_trainer_chunked_head_equals_whole_head(tiny_dir, tmp_path, ref_logps, monkeypatch):
    """`head_chunk_mb` below one row (every row its own chunk: policy, reference pass or in-memory reference)
    against 0 (the model's own head): the same run, step by step (SGD: round-off is not amplified)."""
    from test_train import make_cfg

    from isdaa import logprobs
    from isdaa.api import train
    from isdaa.io import read_jsonl

    calls = []
    original = logprobs.chunked_token_logps
    monkeypatch.setattr(logprobs, "chunked_token_logps", lambda *a, **k: calls.append(1) or original(*a, **k))

    rows = [{"prompt": f"w{i} w{i + 1} w{i + 2}"[: 3 + i % 7], "chosen": "good yes w" + str(i),
             "rejected": "bad no " + "w3 " * (i % 4)} for i in range(16)]
    runs = []
    for mb in (TINY_MB, 0):
        cfg = make_cfg(tiny_dir, tmp_path, f"run-{mb}", rows=rows, method="is-dpo", beta=0.5, batch_size=4,
                       micro_batch_size=4, optim={"optimizer": "sgd", "lr": 0.5, "warmup_steps": 0},
                       ref_logps=ref_logps, head_chunk_mb=mb, ref_cache_dir=str(tmp_path / f"cache-{mb}"),
                       **{"data.max_length": 14, "data.max_prompt_length": 7})
        train(cfg)
        runs.append(read_jsonl(tmp_path / f"run-{mb}" / "metrics.jsonl"))
    chunked, whole = runs
    assert len(calls) == 4 + (4 if ref_logps == "on_the_fly" else 0)  # policy (+ in-memory reference) per step
    assert len(chunked) == len(whole) == 4
    assert abs(chunked[-1]["loss"] - chunked[0]["loss"]) > 1e-3  # the policy moved
    for a, b in zip(chunked, whole):
        for k in ("loss", "grad_norm", "rewards/margins", "is/weight_mean"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)


def test_config_checks_the_budget():
    from isdaa.config import load_config

    base = {"model": {"name_or_path": "m"}, "data": {"train": "d.jsonl"}, "output_dir": "o"}
    assert load_config({**base, "head_chunk_mb": 0}, kind="pref").head_chunk_mb == 0
    for bad in (-1, float("nan"), "big", True):
        with pytest.raises(ValueError, match="head_chunk_mb"):
            load_config({**base, "head_chunk_mb": bad}, kind="pref")


@pytest.mark.slow
def test_two_process_ddp_chunked_head_matches_one_process_whole_head(tiny_dir, tmp_path, monkeypatch, torchrun):
    """`torchrun --nproc_per_node 2` (gloo, CPU) with every row its own chunk, through DDP's wrapped forward and
    its gradient reduction, against one process with the model's own head: the same curve and metrics."""
    import yaml
    from test_train import make_cfg, metrics

    from isdaa.api import train
    from isdaa.config import to_dict
    from isdaa.io import read_jsonl

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    single = make_cfg(tiny_dir, tmp_path, "one", max_steps=3, method="is-dpo", head_chunk_mb=0)
    train(single)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({**to_dict(single), "output_dir": str(tmp_path / "two"), "head_chunk_mb": TINY_MB}))
    torchrun(["-m", "isdaa.cli", "train", "pref", "--config", path])
    two = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert len(two) == 3
    for x, y in zip(metrics(single), two):
        for k in ("loss", "grad_norm", "is/ess", "rewards/margins"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), k


def test_ddp_wrapped_model_takes_the_chunked_head():
    """Through a DistributedDataParallel wrapper (a one-process gloo group) the head is captured inside DDP's own
    forward (its hooks stay in the path) and the gradients equal the unwrapped model's full-logits ones."""
    import socket

    import torch.distributed as dist

    model = _family("llama")
    ids, attn, resp = _batch(seed=9)
    expected, _ = _naive(model, ids, attn, resp)
    expected_grads = _grads(model, expected)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        seen = _rows_seen(model)
        got = response_logps(ddp, ids, attn, resp, head_chunk_mb=TINY_MB)
        grads = _grads(ddp.module, got)
    finally:
        dist.destroy_process_group()
    assert seen == [1]
    torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-10, atol=1e-10)
    assert grads.keys() == expected_grads.keys()
    for n, g in grads.items():
        torch.testing.assert_close(g, expected_grads[n], rtol=1e-8, atol=1e-10, msg=n)
