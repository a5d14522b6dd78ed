"""`log_update_norm`: the logged update_norm is ||theta_after - theta_before|| of each optimizer step, checked
against the checkpoints' weights and, for plain SGD, against lr * ||gradient||."""

from __future__ import annotations

import pytest
import torch
from test_train import make_cfg, metrics, weights

from isdaa.api import train


def test_update_norm_is_the_distance_between_consecutive_checkpoints(tiny_dir, tmp_path):
    """AdamW, 3 steps, a checkpoint at every step (and step 0): update_norm of step s equals the float64 norm of
    the difference of checkpoints s and s - 1 over every saved tensor. Off by default: no update_norm key."""
    cfg = make_cfg(tiny_dir, tmp_path, max_steps=3, save_steps=1, save_initial=True, log_update_norm=True)
    train(cfg)
    rows = metrics(cfg)
    ckpt = [weights(f"{cfg.output_dir}/checkpoint-{s}") for s in range(4)]
    for s in range(1, 4):
        diff = sum(float(((ckpt[s][k].double() - ckpt[s - 1][k].double()) ** 2).sum()) for k in ckpt[s])
        assert rows[s - 1]["update_norm"] == pytest.approx(diff ** 0.5, rel=1e-4), s
    assert rows[0]["update_norm"] > 0
    plain = make_cfg(tiny_dir, tmp_path, "plain", max_steps=1)
    train(plain)
    assert "update_norm" not in metrics(plain)[0]


def test_sgd_update_norm_is_lr_times_gradient_norm(tiny_dir, tmp_path):
    """Plain SGD (no momentum, no weight decay, no clipping, constant lr 0.05): theta_after - theta_before =
    -lr * g, so update_norm = 0.05 * grad_norm at every step."""
    cfg = make_cfg(tiny_dir, tmp_path, "sgd", max_steps=3, log_update_norm=True,
                   optim={"optimizer": "sgd", "lr": 0.05, "warmup_steps": 0, "scheduler": "constant",
                          "max_grad_norm": None})
    train(cfg)
    for row in metrics(cfg):
        assert row["update_norm"] == pytest.approx(0.05 * row["grad_norm"], rel=1e-3)


def test_update_norm_refuses_sharded_parameters():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from isdaa.train.update_norm import UpdateNorm

    with pytest.raises(ValueError, match="sharded under FSDP"):
        UpdateNorm(torch.nn.Linear(2, 2), SimpleNamespace(distributed_type=DistributedType.FSDP))
