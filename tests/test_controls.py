"""Controls of the IS weights (`loss.is_control`): permuted among the batch's pairs, the batch's mean weight,
and log-normal weights with the batch's ESS; by hand, their refusals, their seeding and the trainer."""

from __future__ import annotations

import math

import pytest
import torch
from test_train import make_cfg, metrics, pref_rows

from isdaa.api import train
from isdaa.importance import control_log_weights, ess_from_log, matched_sigma
from isdaa.losses import preference_loss
from isdaa.train.callbacks import StopAtStep
from isdaa.train.pref import PrefTask, _check_whole_batch

# Four pairs with joint log-ratios log(1, 2, 3, 4) against pi_b (unclipped: is_clip 10) and, at beta = 1,
# margins h = 0, 1, 2, 3: DPO losses -log sigmoid(h) = 0.6931471806, 0.3132616875, 0.1269280110, 0.0485873516.
W = torch.tensor([1.0, 2.0, 3.0, 4.0])
DPO = [0.6931471805599453, 0.31326168751822286, 0.1269280110429725, 0.04858735157374206]
PAIRS = {
    "policy_chosen_logps": torch.tensor([-1.0, -2.0, -3.0, -4.0]),
    "policy_rejected_logps": torch.tensor([-2.0, -2.0, -2.0, -2.0]),
    "ref_chosen_logps": torch.tensor([-1.0, -3.0, -5.0, -7.0]),     # u_c = 0, 1, 2, 3
    "ref_rejected_logps": torch.tensor([-2.0, -2.0, -2.0, -2.0]),   # u_r = 0
}
BEHAVIOR = {"behavior_chosen_logps": PAIRS["policy_chosen_logps"] - W.log(),
            "behavior_rejected_logps": PAIRS["policy_rejected_logps"]}


def loss(control, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return preference_loss("is-dpo", 1.0, *PAIRS.values(), **BEHAVIOR, is_clip=10.0, is_control=control,
                           generator=gen)


def test_no_control_is_the_is_loss():
    """mean_i w_i DPO_i = (1 * 0.6931 + 2 * 0.3133 + 3 * 0.1269 + 4 * 0.0486) / 4 = 0.4737009988; ESS = (1+2+3+4)^2
    / (4 * (1+4+9+16)) = 100/120."""
    out = loss("none")
    assert out.loss.item() == pytest.approx(0.4737009987550692, rel=1e-6)
    assert out.metrics["is/ess"].item() == pytest.approx(100 / 120, rel=1e-6)


def test_permute_shuffles_the_weights_among_the_pairs():
    """The weights (1, 2, 3, 4) in the order of torch.randperm(4) from the same seed: loss = mean_i w_perm(i) DPO_i;
    same mean 2.5, max 4 and ESS 100/120 as the batch; another seed, another order."""
    for seed in range(3):
        perm = torch.randperm(4, generator=torch.Generator().manual_seed(seed))
        out = loss("permute", seed)
        assert out.weights.tolist() == pytest.approx(W[perm].tolist(), rel=1e-6)
        assert out.loss.item() == pytest.approx(sum(W[perm][i].item() * DPO[i] for i in range(4)) / 4, rel=1e-6)
        m = out.metrics_float()
        assert m["is/weight_mean"] == pytest.approx(2.5, rel=1e-6) and m["is/weight_max"] == pytest.approx(4.0)
        assert m["is/ess"] == pytest.approx(100 / 120, rel=1e-6)
    orders = {tuple(loss("permute", s).weights.tolist()) for s in range(6)}
    assert len(orders) > 1
    with pytest.raises(ValueError, match="pass a torch.Generator"):
        preference_loss("is-dpo", 1.0, *PAIRS.values(), **BEHAVIOR, is_control="permute")


def test_mean_gives_every_pair_the_batch_mean():
    """Every pair gets (1 + 2 + 3 + 4)/4 = 2.5: loss = 2.5 * mean(DPO) = 0.7387026442, ESS 1; no generator needed.
    The IS clip's clip fraction is still reported: with eps = 0.5 (cap e^1 = 2.718), weights 3 and 4 are clipped
    (fraction 0.5) and the mean is (1 + 2 + e + e)/4 = 2.1091409142."""
    out = preference_loss("is-dpo", 1.0, *PAIRS.values(), **BEHAVIOR, is_clip=10.0, is_control="mean")
    assert out.weights.tolist() == pytest.approx([2.5] * 4, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.7387026441843016, rel=1e-6)
    assert out.metrics["is/ess"].item() == pytest.approx(1.0, rel=1e-6)
    clipped = preference_loss("is-dpo", 1.0, *PAIRS.values(), **BEHAVIOR, is_clip=0.5, is_control="mean")
    assert clipped.weights[0].item() == pytest.approx((3 + 2 * math.e) / 4, rel=1e-6)
    assert clipped.metrics["is/clip_frac"].item() == 0.5


def test_matched_random_two_pairs_by_hand():
    """B = 2, weights (1, 3): ESS = 16 / (2 * 10) = 0.8. Log-normal weights with mean 1 and ESS 0.8 for two pairs:
    (a, b) with a + b = 2 and (a + b)^2 / (2 (a^2 + b^2)) = 0.8 -> a^2 + b^2 = 2.5 -> {0.5, 1.5}; the larger goes
    to the pair with the larger normal draw z. The pairs' own weights do not matter: (3, 1) and (2, 6) (same
    ESS) give the same control weights for the same seed."""
    for seed in range(4):
        z = torch.randn(2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        want = [0.5, 1.5] if z[1] > z[0] else [1.5, 0.5]
        for w in ([1.0, 3.0], [3.0, 1.0], [2.0, 6.0]):
            got = control_log_weights(torch.tensor(w).log(), "matched_random", torch.Generator().manual_seed(seed))
            assert got.exp().tolist() == pytest.approx(want, rel=1e-6), (seed, w)


def test_matched_random_matches_the_batch_ess_and_is_log_normal():
    """B = 64 weights spread over 6 orders of magnitude: the control's ESS equals the batch's (1e-6), its mean is
    exactly 1, and its log-weights are an affine function of the seed's N(0, 1) draws (correlation 1)."""
    gen = torch.Generator().manual_seed(7)
    log_w = torch.randn(64, generator=gen) * 1.5 - 1.0
    target = ess_from_log(log_w).item()
    assert 0.05 < target < 0.5
    got = control_log_weights(log_w, "matched_random", torch.Generator().manual_seed(3))
    assert ess_from_log(got).item() == pytest.approx(target, rel=1e-6)
    assert got.exp().mean().item() == pytest.approx(1.0, rel=1e-6)
    z = torch.randn(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    corr = torch.corrcoef(torch.stack([got.double(), z]))[0, 1].item()
    assert corr == pytest.approx(1.0, abs=1e-9)
    assert not torch.allclose(got, log_w)  # not the batch's own weights


def test_matched_sigma_is_monotone_and_handles_the_ends():
    """ESS(exp(sigma z)) decreases with sigma (the bisection's premise), on 200 values of sigma; equal weights
    (ESS 1) give sigma 0; a target below the reachable limit gets a large sigma, not an error."""
    z = torch.randn(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    values = [ess_from_log(s * z).item() for s in torch.linspace(0, 8, 200).tolist()]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:])) and values[0] == pytest.approx(1.0)
    assert matched_sigma(z, 1.0) == 0.0
    assert matched_sigma(z, 0.5 / 16) > 10
    same = control_log_weights(torch.zeros(5), "matched_random", torch.Generator().manual_seed(0))
    assert same.exp().tolist() == pytest.approx([1.0] * 5)


def test_control_generator_is_seeded_by_the_run_seed_and_the_batch(tiny_dir, tmp_path):
    """The trainer's generator: the same seed and batch draw the same numbers (a resumed step repeats its draw);
    another batch or seed, other numbers."""
    cfg = make_cfg(tiny_dir, tmp_path, method="is-dpo", micro_batch_size=8, loss={"is_control": "permute"})
    other = make_cfg(tiny_dir, tmp_path, "other", method="is-dpo", micro_batch_size=8, seed=1,
                     loss={"is_control": "permute"})
    a, b = {"input_ids": torch.tensor([[1, 2, 3]])}, {"input_ids": torch.tensor([[1, 2, 4]])}

    def draw(task_cfg, batch):
        return torch.rand(4, generator=PrefTask(task_cfg)._control_generator(batch)).tolist()

    assert draw(cfg, a) == draw(cfg, a)
    assert draw(cfg, a) != draw(cfg, b) and draw(cfg, a) != draw(other, a)


def test_controls_are_refused_where_they_would_change_meaning(tiny_dir, tmp_path):
    """A control needs IS weights (an is-* method), the whole optimizer step in one loss call (micro_batch_size =
    batch_size, one process) and a known name."""
    with pytest.raises(ValueError, match="needs an is-\\* method, not 'dpo'"):
        make_cfg(tiny_dir, tmp_path, micro_batch_size=8, loss={"is_control": "mean"})
    with pytest.raises(ValueError, match="is_control='permute' computes its loss over the whole optimizer step"):
        make_cfg(tiny_dir, tmp_path, method="is-dpo", loss={"is_control": "permute"})
    with pytest.raises(ValueError, match="is_control must be one of none, permute, mean, matched_random"):
        make_cfg(tiny_dir, tmp_path, method="is-dpo", micro_batch_size=8, loss={"is_control": "shuffle"})
    cfg = make_cfg(tiny_dir, tmp_path, method="is-ipo", micro_batch_size=8, loss={"is_control": "matched_random"})
    with pytest.raises(ValueError, match="2 processes would split"):
        _check_whole_batch(cfg, 2)


def test_controls_in_training_and_resume(tiny_dir, tmp_path):
    """is-dpo, batch 8 (one micro-batch), 3 steps. Step 1: pi_theta = pi_b, every weight 1, all runs alike. Step 2:
    the policy is the same in every run (step 1's update used weights 1), so its IS weights are the same: permute
    logs the uncontrolled run's weight mean and ESS, mean logs its weight mean with ESS 1, matched_random its ESS
    with mean 1. A matched_random run stopped after step 1 and resumed repeats the uninterrupted run."""
    rows = pref_rows(16)
    runs = {c: make_cfg(tiny_dir, tmp_path, c, rows=rows, method="is-dpo", micro_batch_size=8, max_steps=3,
                        optim={"lr": 3e-2, "warmup_steps": 0}, loss={"is_control": c})
            for c in ("none", "permute", "mean", "matched_random")}
    for cfg in runs.values():
        train(cfg)
    m = {c: metrics(cfg) for c, cfg in runs.items()}
    for c in runs:
        assert m[c][0]["is/weight_mean"] == pytest.approx(1.0, abs=1e-6) and m[c][0]["loss"] == pytest.approx(
            m["none"][0]["loss"], rel=1e-6)
    ref = m["none"][1]
    assert ref["is/ess"] < 0.999 and abs(ref["is/weight_mean"] - 1) > 1e-3  # the weights moved
    assert m["permute"][1]["is/weight_mean"] == pytest.approx(ref["is/weight_mean"], rel=1e-5)
    assert m["permute"][1]["is/ess"] == pytest.approx(ref["is/ess"], rel=1e-5)
    assert m["mean"][1]["is/weight_mean"] == pytest.approx(ref["is/weight_mean"], rel=1e-5)
    assert m["mean"][1]["is/ess"] == pytest.approx(1.0, rel=1e-6)
    assert m["matched_random"][1]["is/ess"] == pytest.approx(ref["is/ess"], rel=1e-5)
    assert m["matched_random"][1]["is/weight_mean"] == pytest.approx(1.0, rel=1e-6)
    part = make_cfg(tiny_dir, tmp_path, "part", rows=rows, method="is-dpo", micro_batch_size=8, max_steps=3,
                    optim={"lr": 3e-2, "warmup_steps": 0}, loss={"is_control": "matched_random"}, save_steps=1)
    train(part, callbacks=[StopAtStep(1)])
    assert train(part, resume=True)["resumed_from_step"] == 1
    assert metrics(part) == m["matched_random"]
