"""WPO weighting (Zhou et al. 2024; TRL's `use_weighting`): the per-response sums of logsumexp_v(2 log p(v))
from `isdaa.logprobs` against a naive float64 computation, the weight by hand and from raw logits with
TRL's formula, the refusal with IS, and the trainer (micro-batch invariance, the logged weights)."""

from __future__ import annotations

import math

import pytest
import torch
from test_train import make_cfg, metrics, pref_rows

from isdaa.api import train
from isdaa.config import load_config
from isdaa.logprobs import pair_response_logps, response_logps
from isdaa.losses import METHODS, preference_loss


@pytest.fixture
def float64_rmsnorm(monkeypatch):
    """Llama's RMSNorm computes in float32 whatever the model's dtype: a float64 one, so that the packed
    row and the per-sequence forwards agree to float64 round-off."""
    from transformers.models.llama import modeling_llama

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


ROWS = [  # prompts of 1-6 tokens, responses of 1-12 tokens, padding everywhere
    {"prompt": "w1 w2 w3", "chosen": "good yes", "rejected": "bad no w4 w5 w6 the a is"},
    {"prompt": "w7", "chosen": "good yes w8 w9 w10 w11 w12 w13 w14 w15 w16 w17", "rejected": "bad"},
    {"prompt": "w20 w21 w22 w23 w24 w25", "chosen": "a", "rejected": "no no"},
]


def _model_and_batch(tiny_dir, dtype=torch.float64):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isdaa.data import collate_pref, tokenize_pref

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="sdpa").to(dtype).train()
    batch = collate_pref(tokenize_pref(ROWS, tok, max_length=20, max_prompt_length=8), tok.pad_token_id)
    return model, batch


def naive_sums(model, batch):
    """Each sequence alone, unpadded, full float64 log-softmax: (sum of log p(y_t), sum of
    logsumexp_v(2 log p(v | y_<t))) over its response tokens, token by token."""
    logps, sq = [], []
    for ids, attn, resp in zip(batch["input_ids"], batch["attention_mask"], batch["response_mask"]):
        n = int(attn.sum())
        logp = torch.log_softmax(model(input_ids=ids[None, :n]).logits[0].double(), -1)  # (n, V)
        positions = [t for t in range(1, n) if resp[t]]
        logps.append(sum(logp[t - 1, ids[t]] for t in positions))
        sq.append(sum(torch.logsumexp(2 * logp[t - 1], -1) for t in positions))
    return torch.stack(logps).detach(), torch.stack(sq).detach()


def test_sq_logsumexp_matches_a_naive_float64_loop(tiny_dir, float64_rmsnorm):
    """Every path of isdaa.logprobs (response-only head, full logits, packed pairs) returns (logps, sq_lse)
    with sq_lse[i] = sum over response tokens of logsumexp_v(2 log p(v | context)): equal to the naive loop to
    float64 round-off, without gradient (the log-probs keep theirs)."""
    model, batch = _model_and_batch(tiny_dir)
    want_logps, want_sq = naive_sums(model, batch)
    assert (want_sq < 0).all() and not torch.allclose(want_sq, want_logps)  # log sum p^2 < 0, a distinct sum
    args = (batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    for name, fn in {
        "head_only": lambda: response_logps(model, *args, with_sq_logsumexp=True),
        "full_logits": lambda: response_logps(model, *args, response_only_head=False, with_sq_logsumexp=True),
        "packed_pairs": lambda: pair_response_logps(model, *args, batch["n_pairs"], with_sq_logsumexp=True),
    }.items():
        logps, sq = fn()
        assert sq.shape == (2 * batch["n_pairs"],) and not sq.requires_grad, name
        assert logps.requires_grad, name
        tol = 1e-10 if sq.dtype == torch.float64 else 1e-5  # the contract promises float32 at least
        torch.testing.assert_close(sq.double(), want_sq, rtol=tol, atol=tol, msg=name)
        torch.testing.assert_close(logps.detach().double(), want_logps, rtol=1e-5, atol=1e-5, msg=name)
    assert response_logps(model, *args).shape == (6,)  # the default return is unchanged
    for head_only in (True, False):  # both together: (logps, sq_lse, counts), in that order
        logps, sq, counts = response_logps(model, *args, response_only_head=head_only, with_sq_logsumexp=True,
                                           return_counts=True)
        torch.testing.assert_close(sq.double(), want_sq, rtol=1e-5, atol=1e-5)
        assert counts.tolist() == batch["response_mask"][:, 1:].sum(-1).tolist()


def test_sq_logsumexp_is_float32_for_a_float32_model(tiny_dir):
    model, batch = _model_and_batch(tiny_dir, torch.float32)
    _, sq = response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                           with_sq_logsumexp=True)
    assert sq.dtype == torch.float32 and not sq.requires_grad


PAIR = {"policy_chosen_logps": -2.0, "policy_rejected_logps": -3.0, "ref_chosen_logps": -2.5,
        "ref_rejected_logps": -2.5}


def _pair(grad=False):
    return {k: torch.tensor([v], requires_grad=grad and k.startswith("policy")) for k, v in PAIR.items()}


def test_wpo_weight_value_and_gradient_by_hand():
    """|c| = 4 tokens with sq_lse_c = -1.2, |r| = 2 with sq_lse_r = -2.0:
    mean_c = (logp_c - sq_lse_c) / |c| = (-2.0 + 1.2) / 4 = -0.2; mean_r = (-3.0 + 2.0) / 2 = -0.5;
    w = exp(-0.2 - 0.5) = e^-0.7 = 0.4965853038 (below the clamp at 1).
    DPO: u_c = 0.5, u_r = -0.5, h = 1, beta = 0.5: -log sigmoid(0.5) = 0.4740769842; weighted 0.2354196632.
    The weight is detached: d loss / d logp_c = w * (-beta sigmoid(-beta h)) = 0.4965853 * -0.5 * 0.3775407
    = -0.0937405739, and d / d logp_r = +0.0937405739."""
    x = _pair(grad=True)
    sq = {"policy_chosen_sq_lse": torch.tensor([-1.2]), "policy_rejected_sq_lse": torch.tensor([-2.0])}
    lengths = {"chosen_lengths": torch.tensor([4]), "rejected_lengths": torch.tensor([2])}
    out = preference_loss("dpo", 0.5, *x.values(), **sq, **lengths, wpo_weighting=True)
    assert out.weights.item() == pytest.approx(0.4965853037914095, rel=1e-6) and not out.weights.requires_grad
    assert out.loss.item() == pytest.approx(0.23541966320959354, rel=1e-6)
    gc, gr = torch.autograd.grad(out.loss, (x["policy_chosen_logps"], x["policy_rejected_logps"]))
    assert gc.item() == pytest.approx(-0.09374057385436949, rel=1e-5)
    assert gr.item() == pytest.approx(0.09374057385436949, rel=1e-5)
    assert out.metrics["wpo/weight_mean"].item() == pytest.approx(0.4965853037914095, rel=1e-6)
    assert out.metrics["wpo/clip_frac"].item() == 0.0 and out.metrics["is/weight_mean"].item() == 1.0
    plain = preference_loss("dpo", 0.5, *x.values(), **sq, **lengths)  # the option off: weight 1
    assert plain.loss.item() == pytest.approx(0.4740769841801067, rel=1e-6)


def test_wpo_clamp_at_max_weight():
    """mean_c = (-0.5 + 1.0) / 1 = 0.5, mean_r = (-1.0 + 1.4) / 2 = 0.2: log w = 0.7, w = e^0.7 = 2.0137527.
    Default wpo_max_weight 1 (TRL < 1.0): w = 1, clipped (wpo/clip_frac 1); 2.0: w = 2; null (TRL 1.x): e^0.7."""
    x = {"policy_chosen_logps": torch.tensor([-0.5]), "policy_rejected_logps": torch.tensor([-1.0]),
         "ref_chosen_logps": torch.tensor([-1.0]), "ref_rejected_logps": torch.tensor([-1.0])}
    extra = {"policy_chosen_sq_lse": torch.tensor([-1.0]), "policy_rejected_sq_lse": torch.tensor([-1.4]),
             "chosen_lengths": torch.tensor([1]), "rejected_lengths": torch.tensor([2])}
    for cap, want, clipped in ((1.0, 1.0, 1.0), (2.0, 2.0, 1.0), (None, 2.0137527074704766, 0.0)):
        out = preference_loss("dpo", 0.1, *x.values(), **extra, wpo_weighting=True, wpo_max_weight=cap)
        assert out.weights.item() == pytest.approx(want, rel=1e-6), cap
        assert out.metrics["wpo/clip_frac"].item() == clipped


@pytest.mark.parametrize("method", ["dpo", "ipo", "dpo-norm", "simpo"])
def test_wpo_equals_trls_formula_on_raw_logits(method):
    """TRL 1.x's use_weighting recomputed from per-token logits (B=3 pairs, V=7, responses of 1-5 tokens, float64):
    aligned = (log p(y_t) - (logsumexp(2 z_t) - 2 logsumexp(z_t))) on response tokens, mean over the response,
    w = exp(mean_c) * exp(mean_r), no clamp; the loss = mean(w * base loss). isdaa gets the same from the summed
    (B,) inputs, for a base loss of each family."""
    gen = torch.Generator().manual_seed(0)
    B, T, V = 3, 5, 7
    logits = torch.randn(2 * B, T, V, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(V, (2 * B, T), generator=gen)
    mask = torch.arange(T)[None, :] < torch.tensor([2, 5, 1, 3, 4, 5])[:, None]  # (2B, T) response tokens
    per_token = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    log_sum_sq = torch.logsumexp(2 * logits, -1) - 2 * torch.logsumexp(logits, -1)
    trl_mean = ((per_token - log_sum_sq) * mask).sum(1) / mask.sum(1)
    trl_w = torch.exp(trl_mean[:B]) * torch.exp(trl_mean[B:])
    logps, sq = (per_token * mask).sum(1), (log_sum_sq * mask).sum(1)
    lengths = mask.sum(1)
    ref = -torch.rand(2 * B, generator=gen, dtype=torch.float64) * 5
    common = dict(chosen_lengths=lengths[:B], rejected_lengths=lengths[B:])
    out = preference_loss(method, 0.3, logps[:B], logps[B:], ref[:B], ref[B:], policy_chosen_sq_lse=sq[:B],
                          policy_rejected_sq_lse=sq[B:], wpo_weighting=True, wpo_max_weight=None, **common)
    base = preference_loss(method, 0.3, logps[:B], logps[B:], ref[:B], ref[B:], **common)
    torch.testing.assert_close(out.weights.double(), trl_w, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.loss.double(), (trl_w * base.losses.double()).mean(), rtol=1e-6, atol=0)
    assert not torch.allclose(trl_w, torch.ones(B, dtype=torch.float64))


def test_wpo_is_an_option_of_every_base_method_and_refused_with_is():
    """Every base method reads wpo_weighting (and then needs lengths and the sq_lse sums); every is-* method
    refuses it, in the loss and at config time, saying why."""
    for name, entry in METHODS.items():
        if entry.importance_weighted:
            assert "wpo_weighting" not in entry.options and not entry.requires_sq_logsumexp({"wpo_weighting": True})
            with pytest.raises(ValueError, match="count pi_theta twice"):
                preference_loss(name, 0.1, *_pair().values(), chosen_lengths=torch.tensor([1]),
                                rejected_lengths=torch.tensor([1]), wpo_weighting=True)
        else:
            assert "wpo_weighting" in entry.options and entry.requires_sq_logsumexp({"wpo_weighting": True})
            assert entry.requires_lengths({"wpo_weighting": True})
    with pytest.raises(ValueError, match="needs policy_chosen_sq_lse"):
        preference_loss("dpo", 0.1, *_pair().values(), chosen_lengths=torch.tensor([1]),
                        rejected_lengths=torch.tensor([1]), wpo_weighting=True)
    base = {"model": {"name_or_path": "m"}, "data": {"train": "d.jsonl"}, "output_dir": "o"}
    with pytest.raises(ValueError, match="loss: method 'is-dpo': wpo_weighting cannot be combined"):
        load_config(base, ["method=is-dpo", "loss.wpo_weighting=true"])
    assert load_config(base, ["method=ipo", "loss.wpo_weighting=true"]).loss.wpo_weighting is True


def test_wpo_training_is_micro_batch_invariant_and_logs_the_weights(tiny_dir, tmp_path):
    """dpo + wpo_weighting trains with the sq_lse sums from the trainer's own forward: batch 8 x 1 micro-batch and
    8 micro-batches of 1 give the same curve (WPO's weight is per pair). Step 1's logged wpo/weight_mean is the mean
    WPO weight of the whole data (batch = all 8 rows) computed here by the naive float64 loop on the initial
    model, clamped at 1; is/* stays that of w = 1 (no IS weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isdaa.data import collate_pref, tokenize_pref

    rows = pref_rows(8)
    runs = [make_cfg(tiny_dir, tmp_path, f"wpo{m}", rows=rows, micro_batch_size=m, max_steps=3,
                     loss={"wpo_weighting": True}) for m in (8, 1)]
    for cfg in runs:
        train(cfg)
    a, b = (metrics(cfg) for cfg in runs)
    for x, y in zip(a, b):
        for k in ("loss", "grad_norm", "wpo/weight_mean", "wpo/weight_max", "is/ess", "rewards/margins"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), k
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).double()
    batch = collate_pref(tokenize_pref(rows, tok, max_length=32, max_prompt_length=16), tok.pad_token_id)
    logps, sq = naive_sums(model, batch)
    lengths = batch["response_mask"].sum(1).double()
    log_w = (logps - sq) / lengths
    w = torch.exp(log_w[:8] + log_w[8:]).clamp(max=1.0)
    assert a[0]["wpo/weight_mean"] == pytest.approx(float(w.mean()), rel=1e-4)
    assert a[0]["wpo/weight_max"] == pytest.approx(float(w.max()), rel=1e-4)
    assert a[0]["wpo/ess"] == pytest.approx(float(w.sum() ** 2 / (8 * (w ** 2).sum())), rel=1e-4)  # one micro-batch
    assert a[0]["wpo/weight_mean"] < 0.99 and float(w.std()) > 0.01  # weights that differ from 1 and between pairs
    assert all(r["is/ess"] == 1.0 and r["is/weight_mean"] == 1.0 for r in a + b)
    assert math.isfinite(a[-1]["loss"])
