"""isdaa.losses: hand-derived values, float64 gradcheck, properties of the IS weights, the front door."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from isdaa import losses
from isdaa.importance import ess
from isdaa.losses import METHODS, OPTION_DEFAULTS, preference_loss


def t(*values, dtype=torch.float32, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# One pair used by the hand calculations: u_c = -1.0 - (-1.5) = 0.5, u_r = -2.0 - (-1.5) = -0.5, h = 1.0.
PAIR = {
    "policy_chosen_logps": t(-1.0),
    "policy_rejected_logps": t(-2.0),
    "ref_chosen_logps": t(-1.5),
    "ref_rejected_logps": t(-1.5),
}
LENGTHS_2_5 = {"chosen_lengths": t(2.0), "rejected_lengths": t(5.0)}
BASE = [name for name, m in METHODS.items() if not m.importance_weighted]


def sp(x: float) -> float:
    """-log sigmoid(x) = log(1 + e^-x), by the math module."""
    return math.log1p(math.exp(-x))


# --------------------------------------------------------------------------------------------------
# Base losses against hand-derived values


def test_dpo_value():
    """u_c = 0.5, u_r = -0.5, h = 1, beta = 0.5: -log sigmoid(0.5) = log(1 + e^-0.5)
    = log(1.6065306597) = 0.4740769842."""
    out = losses.dpo(*PAIR.values(), beta=0.5)
    assert out.item() == pytest.approx(0.4740769841801067, rel=1e-6)
    assert out.item() == pytest.approx(sp(0.5), rel=1e-6)


def test_ipo_value_summed_and_length_normalized():
    """Summed: h = 1, beta = 0.25, 1/(2 beta) = 2: (1 - 2)^2 = 1.
    Length-normalized, |c| = 2, |r| = 5: u_c/2 - u_r/5 = 0.25 + 0.1 = 0.35; beta = 0.1 -> 1/(2 beta) = 5:
    (0.35 - 5)^2 = 4.65^2 = 21.6225."""
    assert losses.ipo(*PAIR.values(), beta=0.25, length_normalize=False).item() == pytest.approx(1.0, rel=1e-6)
    out = losses.ipo(*PAIR.values(), beta=0.1, length_normalize=True, **LENGTHS_2_5)
    assert out.item() == pytest.approx(21.6225, rel=1e-6)


def test_rpo_value_summed_and_mean_nll():
    """beta = 0.5, eta = 0.005, logp_theta(chosen) = -1: DPO part 0.4740769842 (see test_dpo_value) plus
    beta * eta * NLL = 0.5 * 0.005 * 1.0 = 0.0025 -> 0.4765769842. Per-token mean NLL with |c| = 4:
    0.0025 / 4 = 0.000625 -> 0.4747019842."""
    rpo = losses.rpo(*PAIR.values(), beta=0.5, eta=0.005, nll_mean=False)
    assert rpo.item() == pytest.approx(0.4765769841801067, rel=1e-6)
    out = losses.rpo(*PAIR.values(), beta=0.5, eta=0.005, nll_mean=True, chosen_lengths=t(4.0))
    assert out.item() == pytest.approx(0.4747019841801067, rel=1e-6)


def test_chipo_value_and_clip():
    """beta = 0.5: e^0.5 - e^-0.5 = 1.6487212707 - 0.6065306597 = 1.0421906110 (= 2 sinh 0.5);
    plus h = 1 -> 2.0421906110; times beta -> 1.0210953055; loss = log(1 + e^-1.0210953055) = 0.3076...
    With R = 0.25 the logit is clipped to 2R = 0.5: log(1 + e^-0.5) = 0.4740769842."""
    logit = 0.5 * (2 * math.sinh(0.5) + 1.0)
    assert logit == pytest.approx(1.0210953055, rel=1e-9)
    assert losses.chipo(*PAIR.values(), beta=0.5, rmax=None).item() == pytest.approx(sp(logit), rel=1e-6)
    clipped = losses.chipo(*PAIR.values(), beta=0.5, rmax=0.25).item()
    assert clipped == pytest.approx(0.4740769841801067, rel=1e-6)


def test_rdpo_value():
    """beta = 0.5, alpha = 0.01, |c| = 10, |r| = 4: logit = 0.5 * 1 + 0.01 * (10 - 4) = 0.56;
    loss = log(1 + e^-0.56) = log(1 + 0.5712090638) = 0.4518963..."""
    out = losses.rdpo(*PAIR.values(), beta=0.5, alpha=0.01, chosen_lengths=t(10.0), rejected_lengths=t(4.0))
    assert out.item() == pytest.approx(math.log(1 + math.exp(-0.56)), rel=1e-6)


def test_rdpo_learns_less_from_a_longer_chosen():
    """PLUS sign (Park et al. 2024, Eq. 9): with a longer chosen response the logit beta*h + alpha*(|c|-|r|)
    is larger, so the loss is LOWER than DPO's and its gradient w.r.t. h smaller (beta*sigmoid(-logit)):
    the pair, already explained by length, teaches less. A shorter chosen gives a higher loss and gradient."""
    dpo_pc = PAIR["policy_chosen_logps"].clone().requires_grad_(True)
    dpo = losses.dpo(dpo_pc, *list(PAIR.values())[1:], beta=0.5)
    (g_dpo,) = torch.autograd.grad(dpo.sum(), dpo_pc)
    for lc, lr, sign in ((10.0, 4.0, -1), (4.0, 10.0, +1)):
        pc = PAIR["policy_chosen_logps"].clone().requires_grad_(True)
        rest = list(PAIR.values())[1:]
        out = losses.rdpo(pc, *rest, beta=0.5, alpha=0.01, chosen_lengths=t(lc), rejected_lengths=t(lr))
        (g,) = torch.autograd.grad(out.sum(), pc)
        assert sign * (out.item() - dpo.item()) > 0
        assert sign * (g.abs().item() - g_dpo.abs().item()) > 0


def test_simpo_value_gradient_and_no_reference():
    """SimPO, beta = 2, gamma = 0.5, logp(c) = -1 over |c| = 2 tokens, logp(r) = -2 over |r| = 5:
    z = 2 * (-1/2) - 2 * (-2/5) - 0.5 = -1 + 0.8 - 0.5 = -0.7; loss = log(1 + e^0.7) = 1.1031044...
    d loss / d logp(c) = -sigmoid(-z) * beta/|c| = -sigmoid(0.7) = -0.6681878; d / d logp(r) =
    +sigmoid(0.7) * 2/5 = 0.2672751. No reference enters: the front door takes none, and IS-SimPO with
    behavior log-probs needs none either (its weight is pi_theta/pi_b); without them it needs pi_ref."""
    pc, pr = t(-1.0, grad=True), t(-2.0, grad=True)
    lengths = LENGTHS_2_5
    out = losses.simpo(pc, pr, beta=2.0, gamma=0.5, **lengths)
    assert out.item() == pytest.approx(math.log1p(math.exp(0.7)), rel=1e-6)
    gc, gr = torch.autograd.grad(out.sum(), (pc, pr))
    sig = 1 / (1 + math.exp(-0.7))
    assert gc.item() == pytest.approx(-sig, rel=1e-6) and gr.item() == pytest.approx(sig * 2 / 5, rel=1e-6)
    front = preference_loss("simpo", 2.0, pc, pr, simpo_gamma=0.5, **lengths)
    assert front.loss.item() == pytest.approx(out.item(), rel=1e-6)
    assert front.metrics["rewards/chosen"].item() == pytest.approx(-2.0)  # beta * logp, ref taken as 0
    assert not METHODS["simpo"].requires_reference(has_behavior_logps=False)
    behavior = {"behavior_chosen_logps": t(-1.5), "behavior_rejected_logps": t(-2.0)}
    weighted = preference_loss("is-simpo", 2.0, pc, pr, simpo_gamma=0.5, is_clip=10.0, **behavior, **lengths)
    assert weighted.weights.item() == pytest.approx(math.exp(0.5), rel=1e-6)  # (-1 + 1.5) + (-2 + 2)
    assert weighted.loss.item() == pytest.approx(math.exp(0.5) * out.item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs ref_chosen_logps"):
        preference_loss("is-simpo", 2.0, pc, pr, **lengths)


def test_dpo_norm_value_and_gradient():
    """Length-normalized DPO (TRL's sigmoid_norm), PAIR with |c| = 2, |r| = 5, beta = 0.5:
    u_c/|c| - u_r/|r| = 0.5/2 + 0.5/5 = 0.35; logit 0.5 * 0.35 = 0.175; loss = log(1 + e^-0.175) = 0.6094704307.
    d loss / d logp_theta(c) = -beta/|c| sigmoid(-0.175) = -0.25 * 0.4563613 = -0.1140903282;
    d / d logp_theta(r) = +beta/|r| sigmoid(-0.175) = 0.0456361313. With every length 1 it is DPO."""
    pc, pr = t(-1.0, grad=True), t(-2.0, grad=True)
    out = losses.dpo_norm(pc, pr, t(-1.5), t(-1.5), beta=0.5, **LENGTHS_2_5)
    assert out.item() == pytest.approx(0.6094704306630468, rel=1e-6)
    gc, gr = torch.autograd.grad(out.sum(), (pc, pr))
    assert gc.item() == pytest.approx(-0.1140903281907303, rel=1e-5)
    assert gr.item() == pytest.approx(0.04563613127629212, rel=1e-5)
    ones = {"chosen_lengths": t(1.0), "rejected_lengths": t(1.0)}
    assert losses.dpo_norm(*PAIR.values(), beta=0.5, **ones).item() == pytest.approx(0.4740769841801067, rel=1e-6)
    assert METHODS["dpo-norm"].requires_lengths({}) and METHODS["dpo-norm"].needs_reference


# Two pairs for the batch-level SFT term: PAIR (h = 1) and a pair with u_c = -0.5, u_r = 0.5 (h = -1).
TWO_PAIRS = {
    "policy_chosen_logps": t(-1.0, -3.0), "policy_rejected_logps": t(-2.0, -1.0),
    "ref_chosen_logps": t(-1.5, -2.5), "ref_rejected_logps": t(-1.5, -1.5),
}


def test_dpo_sft_value_gradient_and_trl_batch_token_mean():
    """DPO + SFT term as TRL 1.x (loss_type [sigmoid, sft], loss_weights [1, 0.2]), beta = 0.5, |c| = 2 and 4:
    DPO parts -log sigmoid(0.5) = 0.4740769842 and -log sigmoid(-0.5) = 0.9740769842, mean 0.7240769842.
    SFT term: chosen NLLs 1 and 3 over 2 + 4 = 6 chosen tokens -> 4/6; L = 0.7240769842 + 0.2 * 4/6 = 0.8574103175.
    Per pair dpo_b + 0.2 * NLL_b * B / 6: 0.4740769842 + 0.2/3 and 0.9740769842 + 0.2 (their mean is L).
    dL/dlogp(c_1) = (-0.5 sigmoid(-0.5) - 0.2 * 2/6) / 2 = -0.1277185005; dL/dlogp(c_2) = (-0.5 sigmoid(0.5)
    - 0.2/3) / 2 = -0.1889481661; dL/dlogp(r_1) = 0.5 sigmoid(-0.5) / 2 = 0.0943851672.
    rpo with rpo_nll_mean (per-sequence means 1/2 and 3/4) and eta = 0.2/beta = 0.4 gives 0.7240769842
    + 0.2 * (0.5 + 0.75)/2 = 0.8490769842: NOT TRL's term when the chosen lengths differ; equal when they match."""
    x = {k: v.clone().requires_grad_(k.startswith("policy")) for k, v in TWO_PAIRS.items()}
    lengths = {"chosen_lengths": t(2.0, 4.0), "rejected_lengths": t(3.0, 3.0)}
    out = preference_loss("dpo-sft", 0.5, *x.values(), dpo_sft_weight=0.2, **lengths)
    assert out.loss.item() == pytest.approx(0.85741031751344, rel=1e-6)
    assert out.losses.tolist() == pytest.approx([0.4740769841801067 + 0.2 / 3, 0.9740769841801067 + 0.2], rel=1e-6)
    gc, gr = torch.autograd.grad(out.loss, (x["policy_chosen_logps"], x["policy_rejected_logps"]))
    assert gc.tolist() == pytest.approx([-0.12771850053286968, -0.18894816613379697], rel=1e-5)
    assert gr[0].item() == pytest.approx(0.09438516719953635, rel=1e-5)
    rpo = preference_loss("rpo", 0.5, *x.values(), rpo_eta=0.4, rpo_nll_mean=True, **lengths)
    assert rpo.loss.item() == pytest.approx(0.8490769841801067, rel=1e-6)
    same = {"chosen_lengths": t(3.0, 3.0), "rejected_lengths": t(3.0, 3.0)}
    a = preference_loss("dpo-sft", 0.5, *x.values(), dpo_sft_weight=0.2, **same)
    b = preference_loss("rpo", 0.5, *x.values(), rpo_eta=0.4, rpo_nll_mean=True, **same)
    torch.testing.assert_close(a.losses, b.losses)
    assert METHODS["dpo-sft"].couples_batch and METHODS["dpo-sft"].whole_batch({})
    assert not any(m.whole_batch({}) for name, m in METHODS.items() if "dpo-sft" not in name)


def test_dpo_sft_equals_trls_formula_on_per_token_logps():
    """TRL 1.x recomputed from per-token log-probs (B = 3, responses of 1-5 tokens): sigmoid loss on the summed
    log-ratios, mean over pairs, + weight * (-mean of the chosen per-token log-probs over ALL chosen tokens of the
    batch); isdaa's dpo-sft from the (B,) sums and lengths gives the same loss and gradient."""
    gen = torch.Generator().manual_seed(4)
    per_token = (-3 * torch.rand(6, 5, generator=gen, dtype=torch.float64)).requires_grad_(True)  # (2B, T)
    mask = torch.arange(5)[None, :] < torch.tensor([1, 5, 3, 2, 4, 2])[:, None]
    ref = -5 * torch.rand(6, generator=gen, dtype=torch.float64)
    beta, weight = 0.3, 0.7
    logps = (per_token * mask).sum(1)
    logps_trl = (per_token * mask).sum(1)  # a graph of its own
    delta = (logps_trl[:3] - ref[:3]) - (logps_trl[3:] - ref[3:])
    trl = -torch.nn.functional.logsigmoid(beta * delta).mean() - weight * per_token[:3][mask[:3]].mean()
    (g_trl,) = torch.autograd.grad(trl, per_token)
    ours = preference_loss("dpo-sft", beta, logps[:3], logps[3:], ref[:3], ref[3:], dpo_sft_weight=weight,
                           chosen_lengths=mask[:3].sum(1), rejected_lengths=mask[3:].sum(1)).loss
    (g_ours,) = torch.autograd.grad(ours, per_token)
    assert ours.item() == pytest.approx(trl.item(), rel=1e-6)
    torch.testing.assert_close(g_ours, g_trl, rtol=1e-5, atol=1e-7)


def test_ipo_minimum_at_half_inverse_beta():
    """(h - 1/(2 beta))^2 is 0 with zero gradient at h = 1/(2 beta) = 2.5 (beta = 0.2); 0.01 at 2.5 +- 0.1."""
    beta = 0.2
    for h, expect_zero in ((2.5, True), (2.4, False), (2.6, False)):
        pc = t(h, dtype=torch.float64, grad=True)
        zero = t(0.0, dtype=torch.float64)
        out = losses.ipo(pc, zero, zero, zero, beta=beta, length_normalize=False)
        (g,) = torch.autograd.grad(out.sum(), pc)
        if expect_zero:
            assert out.item() == 0.0 and g.item() == 0.0
        else:
            assert out.item() == pytest.approx(0.01, rel=1e-9)


@pytest.mark.parametrize("name", BASE)
@pytest.mark.parametrize("length_options", [False, True])
def test_gradcheck_float64(name, length_options):
    """Every base loss through its registry entry, in float64, with and without the length options."""
    gen = torch.Generator().manual_seed(0)
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    logps = [(-5 * torch.rand(6, generator=gen, dtype=torch.float64)).requires_grad_(True) for _ in names]
    lengths = {"chosen_lengths": torch.tensor([1.0, 3, 5, 7, 9, 11], dtype=torch.float64),
               "rejected_lengths": torch.tensor([2.0, 2, 4, 8, 6, 10], dtype=torch.float64)}
    when = METHODS[name].lengths.when
    options = {o: True for o in when} if length_options and isinstance(when, tuple) else {}
    entry = METHODS[name]
    assert torch.autograd.gradcheck(lambda *x: entry.base_losses(0.3, options, {**dict(zip(names, x)), **lengths}),
                                    logps)


# --------------------------------------------------------------------------------------------------
# Importance weights


@pytest.mark.parametrize("name", BASE)
def test_is_equals_base_when_policy_is_behavior(name):
    gen = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (-20 * torch.rand(8, generator=gen) for _ in range(4))
    lengths = {"chosen_lengths": torch.arange(1.0, 9), "rejected_lengths": torch.arange(2.0, 10)}
    base = preference_loss(name, 0.1, pc, pr, rc, rr, **lengths)
    is_ = preference_loss(f"is-{name}", 0.1, pc, pr, rc, rr,
                          behavior_chosen_logps=pc.clone(), behavior_rejected_logps=pr.clone(), **lengths)
    assert torch.equal(is_.weights, torch.ones(8))
    assert torch.equal(is_.losses, base.losses)


def test_clip_boundary_at_two_eps():
    """eps = 0.5, 2 eps = 1. Joint log-ratios: 0.75 (below: w = e^0.75, unclipped), exactly 1.0 (w = e^1),
    1.5 and 30 (above: w = e^1 exactly, clipped). test_importance.py checks the weights themselves."""
    pc = t(-1.0, -1.0, -1.0, -1.0)
    bc = t(-1.5, -1.5, -2.0, -30.0)   # chosen log-ratios 0.5, 0.5, 1.0, 29.0
    pr = t(-2.0, -2.0, -2.0, -2.0)
    br = t(-2.25, -2.5, -2.5, -3.0)   # rejected log-ratios 0.25, 0.5, 0.5, 1.0
    e1 = torch.tensor(1.0).exp()
    out = preference_loss("is-dpo", 0.1, pc, pr, pc, pr, behavior_chosen_logps=bc, behavior_rejected_logps=br,
                          is_clip=0.5)
    assert out.metrics["is/clip_frac"].item() == 0.5  # 1.5 and 30 are above 2 eps; 1.0 is not
    assert out.metrics["is/weight_max"].item() == e1.item()


def test_weights_are_detached_and_gradient_is_weight_times_base_gradient():
    gen = torch.Generator().manual_seed(2)
    pc, pr = ((-3 * torch.rand(5, generator=gen)).requires_grad_(True) for _ in range(2))
    rc, rr = (-3 * torch.rand(5, generator=gen) for _ in range(2))
    out = preference_loss("is-dpo", 0.5, pc, pr, rc, rr, is_clip=10.0)
    assert not out.weights.requires_grad
    assert all(not v.requires_grad for v in out.metrics.values())
    g_is = torch.autograd.grad(out.loss, (pc, pr))
    base = losses.dpo(pc, pr, rc, rr, beta=0.5)
    g_base = torch.autograd.grad(base.sum(), (pc, pr))
    expected_w = torch.exp((pc - rc + pr - rr).detach())  # pi_b = pi_ref, unclipped (2 eps = 20)
    assert torch.allclose(out.weights, expected_w, rtol=1e-6)
    for gi, gb in zip(g_is, g_base):
        assert torch.allclose(gi, expected_w * gb / 5, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", BASE)
def test_is_is_composition_for_every_base_loss(name):
    """losses = w * base losses, w = exp(min(log ratio, 2 eps)) computed here from the inputs."""
    gen = torch.Generator().manual_seed(3)
    pc, pr, rc, rr, bc, br = (-4 * torch.rand(7, generator=gen) for _ in range(6))
    lengths = {"chosen_lengths": torch.arange(1.0, 8), "rejected_lengths": torch.arange(3.0, 10)}
    base = preference_loss(name, 0.2, pc, pr, rc, rr, **lengths)
    is_ = preference_loss(f"is-{name}", 0.2, pc, pr, rc, rr, behavior_chosen_logps=bc,
                          behavior_rejected_logps=br, **lengths)
    expected_w = torch.exp(torch.clamp(pc - bc + pr - br, max=2.0))
    assert torch.allclose(is_.weights, expected_w, rtol=1e-6)
    assert torch.allclose(is_.losses, expected_w * base.losses, rtol=1e-6)
    assert torch.equal(base.weights, torch.ones(7))


def test_ess_and_top_share_metrics():
    """is/ess = (sum w)^2 / (B sum w^2) and is/top_share = max w / sum w of the weights used, in numpy."""
    gen = torch.Generator().manual_seed(5)
    pc, pr, rc, rr, bc, br = (-5 * torch.rand(12, generator=gen) for _ in range(6))
    out = preference_loss("is-dpo", 0.1, pc, pr, rc, rr, behavior_chosen_logps=bc, behavior_rejected_logps=br)
    w = out.weights.double().numpy()
    assert out.metrics["is/ess"].item() == pytest.approx(w.sum() ** 2 / (12 * (w**2).sum()), rel=1e-5)
    assert out.metrics["is/top_share"].item() == pytest.approx(w.max() / w.sum(), rel=1e-5)
    assert out.metrics["is/ess"].item() == pytest.approx(ess(out.weights).item(), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# The front door


def test_metrics_values_and_types():
    """beta = 0.5, u_c = 0.5, u_r = -0.5 (PAIR): rewards/chosen 0.25, rejected -0.25, margin 0.5, accuracy 1.
    Behavior log-probs -3 and -1: joint log-ratio (-1 + 3) + (-2 + 1) = 1 -> drift/log_ratio_mean 1,
    drift/ratio_mean e."""
    behavior = {"behavior_chosen_logps": t(-3.0), "behavior_rejected_logps": t(-1.0)}
    out = preference_loss("dpo", 0.5, *PAIR.values(), **behavior)
    m = out.metrics_float()
    assert all(isinstance(v, float) for v in m.values())
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in out.metrics.values())
    assert m["rewards/chosen"] == pytest.approx(0.25) and m["rewards/rejected"] == pytest.approx(-0.25)
    assert m["rewards/margins"] == pytest.approx(0.5) and m["rewards/accuracies"] == 1.0
    assert m["logps/chosen"] == -1.0 and m["logps/rejected"] == -2.0
    assert m["is/weight_mean"] == 1.0 and m["is/clip_frac"] == 0.0 and m["is/ess"] == 1.0
    assert m["drift/log_ratio_mean"] == pytest.approx(1.0)
    assert m["drift/ratio_mean"] == pytest.approx(math.e, rel=1e-6)
    assert out.loss.dim() == 0 and out.loss.item() == pytest.approx(0.4740769841801067, rel=1e-6)


def test_drift_ratio_mean_is_log_mean_exp():
    """Joint log-ratios 0 and log 3: mean ratio (1 + 3) / 2 = 2; huge ratios give inf, not NaN."""
    out = preference_loss("dpo", 0.1, t(0.0, math.log(3)), t(0.0, 0.0), t(0.0, 0.0), t(0.0, 0.0))
    assert out.metrics["drift/ratio_mean"].item() == pytest.approx(2.0, rel=1e-6)
    out = preference_loss("dpo", 0.1, t(0.0, 1e4), t(0.0, 0.0), t(0.0, 0.0), t(0.0, 0.0))
    assert out.metrics["drift/ratio_mean"].item() == math.inf


def test_bf16_inputs_give_float32():
    logps = [torch.tensor([-3.0, -7.5], dtype=torch.bfloat16, requires_grad=True) for _ in range(4)]
    for name in ("dpo", "is-ipo", "is-chipo"):
        out = preference_loss(name, 0.1, *logps)
        assert out.loss.dtype == out.losses.dtype == out.weights.dtype == torch.float32
        out.loss.backward()
    assert logps[0].grad.dtype == torch.bfloat16


@pytest.mark.parametrize("method", list(METHODS))
def test_large_log_probs_are_finite(method):
    vals = [(-1e4, 0.0, 0.0, -1e4), (0.0, -1e4, -1e4, 0.0), (-1e4, -1e4, 0.0, 0.0)]
    for pc_, pr_, rc_, rr_ in vals:
        pc, pr = t(pc_, grad=True), t(pr_, grad=True)
        out = preference_loss(method, 0.1, pc, pr, t(rc_), t(rr_),
                              chosen_lengths=t(1.0), rejected_lengths=t(500.0),
                              behavior_chosen_logps=t(rc_ - 1e4), behavior_rejected_logps=t(0.0))
        out.loss.backward()
        assert torch.isfinite(out.loss) and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
        assert torch.isfinite(out.weights).all()


def test_irrelevant_known_options_are_ignored():
    a = preference_loss("dpo", 0.5, *PAIR.values())
    b = preference_loss("dpo", 0.5, *PAIR.values(), rpo_eta=0.3, chipo_rmax=1.0, is_clip=0.1, rdpo_alpha=2.0)
    assert torch.equal(a.losses, b.losses)


@pytest.mark.parametrize(
    "call, message",
    [
        ({"method": "dpp"}, "Did you mean 'dpo'"),
        ({"method": "is_dpo"}, "Did you mean 'is-dpo'"),
        ({"method": "dpo", "is_clipp": 1.0}, "unknown option(s) is_clipp. Valid options: is_clip"),
        ({"method": "rdpo"}, "needs chosen_lengths and rejected_lengths"),
        ({"method": "ipo", "ipo_length_normalize": True}, "needs chosen_lengths"),
        ({"method": "is-dpo", "is_length_normalize": True}, "needs chosen_lengths"),
        ({"method": "rpo", "rpo_nll_mean": True}, "needs chosen_lengths"),
        ({"method": "dpo", "beta": 0.0}, "beta must be a finite number > 0"),
        ({"method": "dpo", "beta": -1.0}, "beta must be a finite number > 0"),
        ({"method": "is-dpo", "is_clip": 0.0}, "is_clip must be a finite number > 0"),
        ({"method": "is-dpo", "is_clip": -1.0}, "is_clip must be a finite number > 0"),
        ({"method": "dpo", "behavior_chosen_logps": t(-1.0)}, "give both behavior"),
    ],
)
def test_errors_are_informative(call, message):
    call = dict(call)
    method, beta = call.pop("method"), call.pop("beta", 0.1)
    with pytest.raises(ValueError, match=None) as err:
        preference_loss(method, beta, *PAIR.values(), **call)
    assert message in str(err.value)
    if "Did you mean" in message:
        assert f"Valid methods: {', '.join(METHODS)}" in str(err.value)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="ref_chosen_logps has shape"):
        preference_loss("dpo", 0.1, t(-1.0, -2.0), t(-1.0, -2.0), t(-1.0), t(-1.0, -2.0))


def test_registry_declares_needs():
    assert list(METHODS) == BASE + [f"is-{m}" for m in BASE]
    for name in BASE:
        plain, weighted = METHODS[name], METHODS[f"is-{name}"]
        assert not plain.uses_behavior_logps and weighted.uses_behavior_logps
        base_options = plain.options[: len(plain.option_args)]
        assert plain.options == base_options + ("wpo_weighting", "wpo_max_weight")
        assert weighted.options == base_options + ("is_clip", "is_self_normalize", "is_length_normalize",
                                                   "is_control")
        assert weighted.requires_reference(has_behavior_logps=False)
        assert plain.requires_reference(True) == plain.requires_reference(False) == plain.needs_reference
        assert set(plain.options) <= set(OPTION_DEFAULTS)
    assert METHODS["rdpo"].requires_lengths({}) and METHODS["is-rdpo"].requires_lengths({})
    assert not METHODS["dpo"].requires_lengths({}) and not METHODS["ipo"].requires_lengths({})
    assert METHODS["ipo"].requires_lengths({"ipo_length_normalize": True})
    assert METHODS["is-dpo"].requires_lengths({"is_length_normalize": True})
    assert METHODS["is-ipo"].importance_weighted and METHODS["is-ipo"].uses_behavior_logps
    assert not METHODS["ipo"].uses_behavior_logps
    assert "is_clip" in METHODS["is-rpo"].options and "rpo_eta" in METHODS["is-rpo"].options
    assert "is_clip" not in METHODS["rpo"].options


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(sorted(METHODS)),
    data=st.data(),
    n=st.integers(1, 16),
    beta=st.floats(1e-3, 10.0),
    normalize=st.booleans(),
)
def test_front_door_is_finite_fuzz(method, data, n, beta, normalize):
    vec = st.lists(st.floats(-1e4, 0.0), min_size=n, max_size=n)
    pc, pr, rc, rr, bc, br = (torch.tensor(data.draw(vec)) for _ in range(6))
    lens = st.lists(st.integers(1, 2048), min_size=n, max_size=n)
    lc, lr = (torch.tensor(data.draw(lens), dtype=torch.float32) for _ in range(2))
    pc.requires_grad_(True), pr.requires_grad_(True)
    out = preference_loss(
        method, beta, pc, pr, rc, rr, behavior_chosen_logps=bc, behavior_rejected_logps=br,
        chosen_lengths=lc, rejected_lengths=lr, is_self_normalize=normalize, ipo_length_normalize=normalize,
        chipo_rmax=None if normalize else 5.0,
    )
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(out.losses).all() and torch.isfinite(out.weights).all()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert 0 < out.metrics["is/ess"].item() <= 1 + 1e-5


def test_drift_metrics_for_a_method_without_weights():
    """DPO logs the would-be IS weights' ESS and clip fraction (the golden-free drift signal), computed
    here with numpy: log r = (pc - bc) + (pr - br) = [-3, 0.5, 2.5, -0.2]; eps = 1 clips 2.5 -> 2."""
    import numpy as np

    pc, pr = torch.tensor([-4.0, -2.0, -1.0, -3.0]), torch.tensor([-5.0, -3.0, -2.0, -3.2])
    bc, br = torch.tensor([-2.0, -2.5, -3.0, -3.0]), torch.tensor([-4.0, -3.0, -2.5, -3.0])
    ref = torch.zeros(4)
    out = preference_loss("dpo", 0.1, pc, pr, ref, ref, behavior_chosen_logps=bc, behavior_rejected_logps=br)
    w = np.exp(np.minimum(np.array([-3.0, 0.5, 2.5, -0.2]), 2.0))
    m = out.metrics_float()
    assert m["drift/ess"] == pytest.approx(w.sum() ** 2 / (4 * (w ** 2).sum()), rel=1e-6)
    assert m["drift/clip_frac"] == pytest.approx(0.25)
    assert m["drift/log_ratio_mean"] == pytest.approx(np.mean([-3.0, 0.5, 2.5, -0.2]), rel=1e-6)
    assert m["is/ess"] == 1.0 and float(out.weights.sum()) == 4.0  # DPO itself is not weighted


def test_every_method_knows_its_base_and_order():
    """is-<m> has base <m> and the same order as <m>; base methods are their own base; orders are distinct."""
    from isdaa.losses import METHODS

    bases = [m for m in METHODS.values() if not m.importance_weighted]
    assert sorted(m.order for m in bases) == list(range(len(bases)))
    for name, m in METHODS.items():
        if m.importance_weighted:
            assert name == f"is-{m.base}" and METHODS[m.base].order == m.order
        else:
            assert m.base == name
