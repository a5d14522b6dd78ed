"""The optimizer and learning-rate schedule of a run, from its `optim` config (AdamW fused where it can be,
or SGD; no weight decay on biases and norms; cosine / linear / constant schedules with linear warmup)."""

from __future__ import annotations

import torch

from isdaa.config import warmup_steps


def make_scheduler(optimizer, ocfg, total_steps: int):
    import transformers

    warmup = warmup_steps(ocfg, total_steps)
    if ocfg.scheduler == "cosine":
        return transformers.get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if ocfg.scheduler == "linear":
        return transformers.get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    return transformers.get_constant_schedule_with_warmup(optimizer, warmup)


def make_optimizer(model, ocfg):
    params = [p for p in model.parameters() if p.requires_grad]
    if ocfg.weight_decay > 0:  # no decay on biases and norms (1-D parameters)
        params = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": ocfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if ocfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.sgd_momentum, weight_decay=ocfg.weight_decay)
    # fused: one kernel over all parameters instead of a dozen foreach ops; the same update up to round-off
    return torch.optim.AdamW(params, lr=ocfg.lr, betas=(ocfg.adam_beta1, ocfg.adam_beta2), eps=ocfg.adam_eps,
                             weight_decay=ocfg.weight_decay, fused=_fusable(model))


def _fusable(model) -> bool:
    """torch's fused AdamW takes floating-point parameters on CPU or CUDA (where `prepare` moves them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
