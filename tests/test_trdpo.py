"""TR-DPO (`ref_sync`): the reference after each update equals the hand-computed mix of the checkpoints (float64),
the loss reads the updated reference while pi_b stays the initial one, stored reference log-probs are never
read, resume restores the synced reference, and the refusals (precompute, LoRA, reference-free, sampled rows
without pi_b, sharded models)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from test_train import make_cfg, metrics, pref_rows, weights

from isdaa.api import train
from isdaa.train.callbacks import StopAtStep

ON_THE_FLY = {"ref_logps": "on_the_fly"}


def snapshot(cfg, step):
    return load_file(f"{cfg.output_dir}/ref_sync/step-{step:08d}.safetensors")


def test_reference_is_the_recursive_mix_of_the_policy_checkpoints(tiny_dir, tmp_path):
    """alpha = 0.6, an update after every step, 3 steps, a checkpoint at every step: with theta_s the policy after
    step s (checkpoint s, theta_0 the initial model) the reference after step s is, in float64,
    r_0 = theta_0, r_s = 0.6 theta_s + 0.4 r_{s-1}. The snapshots of steps 2 and 3 match it to float32 round-off;
    step 1's was pruned (no resumable checkpoint needs it)."""
    # resume_state_keep=1: only the latest checkpoint is resumable, so step 1's snapshot is unneeded
    cfg = make_cfg(tiny_dir, tmp_path, max_steps=3, save_steps=1, save_initial=True,
                   ref_sync={"alpha": 0.6, "steps": 1}, resume_state_keep=1, **ON_THE_FLY)
    train(cfg)
    theta = [{k: v.double() for k, v in weights(f"{cfg.output_dir}/checkpoint-{s}").items()}
             for s in range(4)]
    ref = [theta[0]]
    for s in range(1, 4):
        ref.append({k: 0.6 * theta[s][k] + 0.4 * ref[-1][k] for k in theta[0]})
    for s in (2, 3):
        got = snapshot(cfg, s)
        common = set(got) & set(ref[s])
        assert len(common) >= len(got) - 1  # every parameter (a tied lm_head is saved once)
        for k in common:
            torch.testing.assert_close(got[k].double(), ref[s][k], rtol=1e-6, atol=1e-7)
        assert any(not torch.allclose(got[k].double(), theta[s][k]) for k in common)  # not the policy itself
    assert not (tmp_path / "run" / "ref_sync" / "step-00000001.safetensors").exists()
    syncs = [r.get("ref_sync/syncs") for r in metrics(cfg)]
    assert syncs == [1, 2, 3]


def test_the_loss_reads_the_updated_reference_and_pi_b_stays(tiny_dir, tmp_path):
    """is-dpo, alpha = 1 (the reference becomes the policy), an update every 2 steps, rows carrying made-up ref_*
    columns. Step 1: pi_theta = pi_ref, so every reward is 0: the stored columns were not read. Step 3: the policy
    (before its update) is theta_2 and so is the reference: rewards/* are 0 and the DPO loss is log 2 per pair,
    while the IS weights against pi_b = the initial reference are not 1 (drift/log_ratio_mean != 0)."""
    rows = [{**r, "ref_chosen_logps": -1.0, "ref_rejected_logps": -50.0} for r in pref_rows(16)]
    cfg = make_cfg(tiny_dir, tmp_path, rows=rows, method="is-dpo", max_steps=3, optim={"lr": 2e-2, "warmup_steps": 0},
                   ref_sync={"alpha": 1.0, "steps": 2}, loss={"is_clip": 10.0}, **ON_THE_FLY)
    train(cfg)
    m = metrics(cfg)
    assert m[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert abs(m[1]["rewards/margins"]) > 1e-3
    assert m[2]["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
    assert m[2]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert abs(m[2]["drift/log_ratio_mean"]) > 1e-2 and abs(m[2]["is/weight_mean"] - 1) > 1e-2
    # loss = mean_i w_i log 2: the weights are the IS weights against the initial reference
    assert m[2]["loss"] == pytest.approx(math.log(2) * m[2]["is/weight_mean"], rel=1e-4)


def test_resume_restores_the_synced_reference(tiny_dir, tmp_path):
    """alpha = 0.6, an update every 2 steps, 5 steps; stopped after step 3 (the reference of step 2 is needed for
    steps 3-4) and resumed: the same metrics and final weights as the uninterrupted run. With that snapshot
    removed, resume is an error naming it."""
    kw = dict(max_steps=5, save_steps=1, ref_sync={"alpha": 0.6, "steps": 2}, optim={"lr": 1e-2, "warmup_steps": 0},
              **ON_THE_FLY)
    full, part = make_cfg(tiny_dir, tmp_path, "full", **kw), make_cfg(tiny_dir, tmp_path, "part", **kw)
    train(full)
    assert train(part, callbacks=[StopAtStep(3)])["step"] == 3
    assert train(part, resume=True)["resumed_from_step"] == 3
    assert metrics(full) == metrics(part)
    wf, wp = weights(full.output_dir), weights(part.output_dir)
    assert all(torch.equal(wf[k], wp[k]) for k in wf)
    broken = make_cfg(tiny_dir, tmp_path, "broken", **kw)
    train(broken, callbacks=[StopAtStep(3)])
    (tmp_path / "broken" / "ref_sync" / "step-00000002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="reference of step 2"):
        train(broken, resume=True)


@pytest.mark.parametrize("over, message", [
    ({}, "set ref_logps: on_the_fly"),
    ({**ON_THE_FLY, "model": {"lora": {"r": 4}}}, "with LoRA"),
    ({**ON_THE_FLY, "method": "simpo"}, "is reference-free"),
    ({**ON_THE_FLY, "ref_sync": {"alpha": 0.0}}, r"ref_sync.alpha must be in \(0, 1\]"),
    ({**ON_THE_FLY, "ref_sync": {"steps": 0}}, "ref_sync.steps must be >= 1"),
])
def test_refusals_at_config_time(tiny_dir, tmp_path, over, message):
    over = {"ref_sync": {"alpha": 0.5, "steps": 4}, **over}
    if "lora" in json.dumps(over):
        over["model"] = {"name_or_path": str(tiny_dir), **over["model"]}
    with pytest.raises(ValueError, match=message):
        make_cfg(tiny_dir, tmp_path, **over)


def test_sampled_rows_without_pi_b_are_refused(tiny_dir, tmp_path):
    """A batch_source's rows without behavior columns would fall back to pi_b = the moving reference."""
    rows = pref_rows(8)
    cfg = make_cfg(tiny_dir, tmp_path, max_steps=1, batch_size=8, micro_batch_size=8, ref_sync={"steps": 4},
                   **ON_THE_FLY)
    with pytest.raises(ValueError, match="no behavior log-probs"):
        train(cfg, batch_source=lambda step, model, tok: rows)


def test_sharded_models_are_refused():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from isdaa.train.ref_sync import check_supported

    with pytest.raises(ValueError, match="under DEEPSPEED"):
        check_supported(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED))


@pytest.mark.slow
def test_two_processes_update_the_reference_like_one(tiny_dir, tmp_path, monkeypatch, torchrun):
    """`torchrun --nproc_per_node 2` (gloo, CPU), ref_sync after every step and log_update_norm: the same metrics
    (loss, gradient and update norms, rewards read from the synced reference) and the same reference snapshot as
    one process: every process mixed its own copy to the same values."""
    import yaml

    from isdaa.config import to_dict
    from isdaa.io import read_jsonl

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    single = make_cfg(tiny_dir, tmp_path, "one", max_steps=3, ref_sync={"alpha": 0.6, "steps": 1},
                      log_update_norm=True, **ON_THE_FLY)
    train(single)
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump({**to_dict(single), "output_dir": str(tmp_path / "two")}))
    torchrun(["-m", "isdaa.cli", "train", "pref", "--config", path])
    two = read_jsonl(tmp_path / "two" / "metrics.jsonl")
    for x, y in zip(metrics(single), two, strict=True):
        for k in ("loss", "grad_norm", "update_norm", "rewards/margins", "rewards/chosen"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), k
    one_ref, two_ref = snapshot(single, 3), load_file(str(tmp_path / "two" / "ref_sync" / "step-00000003.safetensors"))
    for k in one_ref:
        torch.testing.assert_close(one_ref[k], two_ref[k], rtol=1e-5, atol=1e-6)
