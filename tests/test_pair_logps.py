"""Packed pairs (`pair_response_logps`: one row [prompt, chosen, rejected] per pair) against a naive
per-sequence loop: each of the 2B sequences alone, unpadded, through the model, float64 log-softmax,
summed over its response tokens. Values and every parameter's gradient, float64.

Llama's RMSNorm computes in float32 whatever the model's dtype; the tests swap in a float64 RMSNorm so
that the comparison is exact to float64 round-off (the packed row reorders the float32 sums otherwise:
~1e-7 relative)."""

import types

import pytest
import torch

from isdaa.logprobs import packed_pairs_supported, pair_response_logps, response_logps


@pytest.fixture
def float64_rmsnorm(monkeypatch):
    from transformers.models.llama import modeling_llama

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


def _model(tiny_dir, attn="sdpa", lora=False):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=attn).double().train()
    if lora:
        import peft

        cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                              target_modules=["q_proj", "v_proj"])
        model = peft.get_peft_model(model, cfg).double()
    return model, tok


ROWS = [  # prompts of 2-7 tokens, responses of 1-12 tokens, one truncated by max_length, padding everywhere
    {"prompt": "w1 w2 w3", "chosen": "good yes", "rejected": "bad no w4 w5 w6 the a is"},
    {"prompt": "w7", "chosen": "good yes w8 w9 w10 w11 w12 w13 w14 w15 w16 w17", "rejected": "bad"},
    {"prompt": "w20 w21 w22 w23 w24 w25", "chosen": "a", "rejected": "no no"},
    {"prompt": "w30 w31", "chosen": "yes", "rejected": "w33 w34 w35"},
]


def _batch(tok):
    from isdaa.data import collate_pref, tokenize_pref

    batch = collate_pref(tokenize_pref(ROWS, tok, max_length=14, max_prompt_length=7), tok.pad_token_id)
    assert (batch["attention_mask"] == 0).any() and len(set(batch["response_mask"].sum(-1).tolist())) > 3
    return batch


def naive_pair_logps(model, batch):
    """Each sequence alone (no padding, no packing), full float64 log-softmax, one token at a time."""
    out = []
    for ids, attn, resp in zip(batch["input_ids"], batch["attention_mask"], batch["response_mask"]):
        n = int(attn.sum())
        logits = model(input_ids=ids[None, :n], use_cache=False).logits[0]  # (n, V)
        logp = torch.log_softmax(logits.double(), -1)
        out.append(sum(logp[t - 1, ids[t]] for t in range(1, n) if resp[t]))
    return torch.stack(out)


def _values_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    logps = fn()
    w = torch.linspace(-1.0, 2.0, logps.shape[0], dtype=torch.float64)  # a distinct weight per row
    (logps * w).sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("attn,lora", [("sdpa", False), ("eager", False), ("sdpa", True)])
def test_packed_pairs_match_each_sequence_alone(tiny_dir, float64_rmsnorm, attn, lora):
    model, tok = _model(tiny_dir, attn, lora)
    batch = _batch(tok)
    assert packed_pairs_supported(model)
    expected, expected_grads = _values_and_grads(model, lambda: naive_pair_logps(model, batch))
    got, grads = _values_and_grads(model, lambda: pair_response_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], batch["n_pairs"]))
    assert got.dtype == torch.float64
    # eager attention takes its softmax in float32 whatever the dtype (the packed row's longer, masked
    # rows reorder those sums): float32-softmax round-off there, float64 round-off with sdpa
    tol, gtol = (1e-8, 1e-6) if attn == "eager" else (1e-11, 1e-10)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    assert grads.keys() == expected_grads.keys() and grads
    for name, g in grads.items():
        torch.testing.assert_close(g, expected_grads[name], rtol=gtol, atol=gtol, msg=name)


def test_packed_pairs_float32_model_is_close(tiny_dir):
    """Without the float64 RMSNorm, in float32: equal to the concatenated forward up to round-off."""
    model, tok = _model(tiny_dir)
    model = model.float()
    batch = _batch(tok)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    with torch.no_grad():
        got = pair_response_logps(model, *args, batch["n_pairs"])
        full = response_logps(model, *args)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)


def test_a_batch_outside_the_layout_falls_back(tiny_dir, float64_rmsnorm, monkeypatch):
    """Rows whose prompts differ (not a pair batch) go through the concatenated forward: same values."""
    import isdaa.logprobs as lp

    model, tok = _model(tiny_dir)
    batch = _batch(tok)
    batch["input_ids"][batch["n_pairs"], 1] = (batch["input_ids"][0, 1] + 1) % len(tok)  # pair 0: other prompt
    calls = []
    monkeypatch.setattr(lp, "response_logps", lambda *a, **k: calls.append(1) or response_logps(*a, **k))
    with torch.no_grad():
        got = lp.pair_response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                     batch["n_pairs"])
        expected = naive_pair_logps(model, batch)
    assert calls == [1]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_support_check(tiny_dir):
    model, _ = _model(tiny_dir)
    assert packed_pairs_supported(model)
    model.config.sliding_window = 4  # a windowed model: a full custom mask would override its window
    assert not packed_pairs_supported(model)
    model.config.sliding_window = None
    model.config._attn_implementation = "flash_attention_2"  # takes no 4D mask
    assert not packed_pairs_supported(model)

    class NoKeep(torch.nn.Module):
        config = types.SimpleNamespace(_attn_implementation="sdpa")

        def forward(self, input_ids, attention_mask=None, position_ids=None, **kw):
            return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, 5))

    assert not packed_pairs_supported(NoKeep())


@pytest.mark.parametrize("ref_logps", ["precompute", "on_the_fly"])
def test_trainer_packed_equals_concatenated(tiny_dir, tmp_path, ref_logps, monkeypatch):
    """`pack_pairs` on and off: the same run (SGD, whose updates are linear in the gradient, so float
    round-off is not amplified the way Adam's first steps amplify it), step by step."""
    import json

    from isdaa.api import train
    from isdaa.config import load_config
    from isdaa.io import read_jsonl
    from isdaa.train import pref

    calls = []
    monkeypatch.setattr(pref, "pair_response_logps", lambda *a, **k: calls.append(1) or pair_response_logps(*a, **k))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 4))
    runs = []
    for pack in (True, False):
        cfg = load_config({"model": {"name_or_path": str(tiny_dir)}, "method": "is-dpo", "beta": 0.5,
                           "data": {"train": str(data), "max_length": 14, "max_prompt_length": 7},
                           "optim": {"optimizer": "sgd", "lr": 0.5, "warmup_steps": 0},
                           "output_dir": str(tmp_path / f"run-{pack}"), "batch_size": 4, "micro_batch_size": 4,
                           "epochs": 2, "logging_steps": 1, "progress": False, "num_threads": 1,
                           "mixed_precision": "no", "ref_logps": ref_logps, "pack_pairs": pack,
                           "ref_cache_dir": str(tmp_path / "cache")}, kind="pref")
        train(cfg)
        runs.append(read_jsonl(tmp_path / f"run-{pack}" / "metrics.jsonl"))
    packed, concatenated = runs
    models = 2 if ref_logps == "on_the_fly" else 1  # policy (+ reference): one forward per step each,
    assert len(calls) == 8 * models + models      # plus each model's first-batch packed-vs-unpacked check
    assert len(packed) == len(concatenated) == 8
    assert abs(packed[-1]["loss"] - packed[0]["loss"]) > 1e-3  # the policy moved
    for a, b in zip(packed, concatenated):
        for k in ("loss", "grad_norm", "rewards/margins", "is/weight_mean", "is/ess"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)


@pytest.mark.parametrize("autocast", [False, True])
def test_packed_mask_is_kept_once_not_per_layer(tiny_dir, autocast):
    """sdpa given a boolean 4D mask converts it to floats in every layer and saves each copy for the backward;
    the packed path builds it additive, in the dtype attention runs in (bf16 under autocast), so all layers
    save the one tensor."""
    model, tok = _model(tiny_dir)
    model = model.float()
    batch = _batch(tok)
    masks = {}

    def pack(t):
        if t.dim() == 4 and t.shape[1] == 1 and t.shape[-1] == t.shape[-2]:  # (B, 1, L, L), or rotary tables
            if t.dtype == torch.bool or (t == torch.finfo(t.dtype).min).any():  # a mask, not cos / sin
                masks[t.untyped_storage().data_ptr()] = t.dtype
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logps = pair_response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                    batch["n_pairs"])
    assert model.config.num_hidden_layers == 2
    assert list(masks.values()) == [torch.bfloat16 if autocast else torch.float32]
    with torch.no_grad():
        plain = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    torch.testing.assert_close(logps.detach(), plain, rtol=5e-2 if autocast else 1e-5, atol=5e-2 if autocast else 1e-4)


def test_rows_padded_for_the_mask_alignment_give_the_same_values(tiny_dir, float64_rmsnorm, monkeypatch):
    """On CUDA packed rows are padded to a multiple of 16 positions (MASK_ALIGN); the extra positions are padding:
    the values and gradients equal the unpadded layout's (simulated on the CPU with 7), in float64."""
    from isdaa import logprobs

    model, tok = _model(tiny_dir)
    batch = _batch(tok)
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"], batch["n_pairs"])
    widths = []
    model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    plain, plain_grads = _values_and_grads(model, lambda: pair_response_logps(model, *args))
    monkeypatch.setitem(logprobs.MASK_ALIGN, "cpu", 7)  # this batch packs to 16 positions: 21 with padding
    padded, padded_grads = _values_and_grads(model, lambda: pair_response_logps(model, *args))
    assert widths == [16, 21]
    torch.testing.assert_close(padded, plain, rtol=1e-12, atol=1e-12)
    for n, g in padded_grads.items():
        torch.testing.assert_close(g, plain_grads[n], rtol=1e-10, atol=1e-12, msg=n)
