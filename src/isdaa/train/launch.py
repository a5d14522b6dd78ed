"""How a run meets its processes and devices: accelerate's CPU / multi-process choice, mixed precision,
DeepSpeed's view of the batch, and stopping together."""

from __future__ import annotations

import os

import torch


def use_cpu() -> bool:
    """CPU-only, several processes (`accelerate launch --cpu`, torchrun on CPU): accelerate's MULTI_CPU
    (gloo) needs cpu=True; otherwise leave the device choice to accelerate."""
    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return flag or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)


def resolve_mixed_precision(value: str) -> str:
    if value != "auto":
        return value
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def configure_deepspeed(accelerator, cfg) -> None:
    """We prepare no dataloader, so DeepSpeed learns the micro batch and clipping from the run config."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    ds["train_batch_size"] = cfg.batch_size
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = cfg.optim.max_grad_norm or 0.0


def agree_stop(reason, accelerator):
    """All processes stop together when any one was asked to (one small all-reduce per step, only
    when distributed)."""
    if accelerator.num_processes == 1:
        return reason
    flag = torch.tensor([1.0 if reason else 0.0], device=accelerator.device)
    if accelerator.reduce(flag, reduction="sum").item() > 0:
        return reason or "stop requested on another process"
    return None


def all_finite(loss, grad_norm, accelerator) -> bool:
    """Whether the step's loss and gradient norm are finite on every process (one host sync); under fp16 the
    grad scaler owns gradient overflow, so only the loss counts there."""
    bad = ~torch.isfinite(loss)
    if grad_norm is not None and getattr(accelerator, "scaler", None) is None:
        bad = bad | ~torch.isfinite(torch.as_tensor(grad_norm, device=accelerator.device).float())
    bad = bad.float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return bool(bad.item() == 0)
