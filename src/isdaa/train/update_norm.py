"""The optimizer update's norm ||theta_after - theta_before|| of each step (`log_update_norm: true`).

Costs one copy of the trainable parameters, taken right before `optimizer.step()`; the difference is
formed in place in that copy (no second buffer) and reduced with one foreach norm. A skipped step (a
non-finite loss or gradient) logs 0. With several processes under DDP every process holds the full,
identical parameters after the step (gradients are all-reduced before it), so each computes the same
norm and the loop's mean over processes returns it unchanged. Sharded parameters (FSDP, DeepSpeed) hold
a slice per process: refused rather than reported as a shard's norm.
"""

from __future__ import annotations

import torch


class UpdateNorm:
    def __init__(self, model, accelerator):
        from accelerate.utils import DistributedType

        if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ValueError(f"log_update_norm: parameters are sharded under {accelerator.distributed_type.value}; "
                             "the update norm is computed from full parameters only (one process, or DDP)")
        self.params = [p for p in model.parameters() if p.requires_grad]

    def snapshot(self) -> list[torch.Tensor]:
        """theta_before: a detached copy of every trainable parameter."""
        return [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def norm(self, before: list[torch.Tensor]) -> torch.Tensor:
        """||theta_after - theta_before||_2 over all trainable parameters, a 0-dim float32 tensor (no host sync);
        `before` is overwritten with the difference."""
        if not before:
            return torch.zeros(())
        torch._foreach_sub_(before, [p.detach() for p in self.params])  # before - after, in place
        norms = torch._foreach_norm(before)
        return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
