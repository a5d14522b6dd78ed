"""TR-DPO (Gorbatovski et al. 2024, arXiv 2404.09656): the reference soft-updated toward the policy.

After every `ref_sync.steps`-th optimizer step (TRL: `sync_ref_model`, `ref_model_sync_steps`, 512):

    theta_ref <- alpha * theta_policy + (1 - alpha) * theta_ref         (TRL: `ref_model_mixup_alpha`, 0.6)

over every parameter (buffers are the model's constants and stay), computed in float32 (float64 for a
float64 model) and stored in the reference's dtype. What the trainer does around it (train/pref.py):
- the reference is a model in memory, scored on the fly (`ref_logps: on_the_fly`; the config refuses
  `precompute`), and stored `ref_*` columns are dropped: they hold the initial reference's log-probs;
- pi_b never moves: rows without behavior columns get the INITIAL reference's log-probs as pi_b
  (one cached pass before training), so IS weights and `drift/*` stay against the data's sampler;
- LoRA is refused (the reference is the adapter-free policy, nothing to update; TRL refuses it too),
  so are sharded models (FSDP, DeepSpeed: a full reference beside a sharded policy).
Several processes (DDP): every process holds the same policy after each step (all-reduced gradients)
and the same initial reference, so each mixes its own copy to the same values; no communication.
Resume: each sync writes the reference to `OUTPUT_DIR/ref_sync/step-XXXXXXXX.safetensors` (main process,
atomic) before that step's checkpoint; resuming from checkpoint s loads the snapshot of step
s // steps * steps (none before the first sync). Snapshots no resumable checkpoint needs are deleted.
"""

from __future__ import annotations

from pathlib import Path

import torch

from isdaa.io import atomic_path
from isdaa.train import checkpoint as ckpt
from isdaa.train.callbacks import TrainerCallback

SNAPSHOT_DIR = "ref_sync"


def check_supported(accelerator) -> None:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError(f"ref_sync (TR-DPO) under {accelerator.distributed_type.value}: the policy is sharded and the "
                         "reference is not; the soft update is implemented for one process or DDP")


def check_compatible(ref, policy) -> None:
    """The reference and the policy have the same parameters (names and shapes): a mix is defined."""
    r = {n: tuple(p.shape) for n, p in ref.named_parameters()}
    p = {n: tuple(q.shape) for n, q in policy.named_parameters()}
    if r != p:
        diff = sorted(set(r.items()) ^ set(p.items()))[:4]
        raise ValueError(f"ref_sync (TR-DPO) mixes the policy into the reference parameter by parameter, but they "
                         f"differ (e.g. {diff}): give a ref_model of the policy's architecture")


@torch.no_grad()
def mix_(ref, policy, alpha: float) -> None:
    """theta_ref <- alpha * theta_policy + (1 - alpha) * theta_ref, in place, parameter by parameter."""
    policy_params = dict(policy.named_parameters())
    for name, r in ref.named_parameters():
        dtype = torch.promote_types(r.dtype, torch.float32)
        p = policy_params[name].detach().to(device=r.device, dtype=dtype)
        r.copy_(torch.lerp(r.to(dtype), p, alpha))  # r + alpha (p - r)


def snapshot_path(output_dir, step: int) -> Path:
    return Path(output_dir) / SNAPSHOT_DIR / f"step-{step:08d}.safetensors"


def save_snapshot(ref, output_dir, step: int) -> None:
    from safetensors.torch import save_file

    state = {n: p.detach().contiguous().cpu() for n, p in ref.named_parameters()}
    with atomic_path(snapshot_path(output_dir, step)) as tmp:
        save_file(state, str(tmp))


def restore(ref, output_dir, steps: int, is_main_process: bool = True) -> int:
    """Before training: the reference of the step a resume starts from (0: the initial one, nothing to load).
    A fresh run (no resumable checkpoint) drops stale snapshots of an earlier run in the folder."""
    latest = ckpt.latest_resumable(output_dir, report=None)
    if latest is None:
        if is_main_process:
            clear(output_dir)
        return 0
    synced = ckpt.read_state(latest)["step"] // steps * steps
    if synced == 0:
        return 0
    path = snapshot_path(output_dir, synced)
    if not path.is_file():
        raise FileNotFoundError(f"--resume from {latest.name} with ref_sync: the reference of step {synced} "
                                f"({path}) is missing, so the synced reference cannot be restored")
    from safetensors.torch import load_file

    with torch.no_grad():
        state = load_file(str(path))
        for name, r in ref.named_parameters():
            r.copy_(state[name])
    return synced


def prune(output_dir, steps: int, current: int) -> None:
    """Delete the snapshots that neither the current step nor any resumable checkpoint needs."""
    resumable = [ckpt.read_state(p)["step"] for p in ckpt.checkpoint_folders(output_dir)
                 if ckpt.check_complete(p) is None]
    keep = {snapshot_path(output_dir, s // steps * steps).name for s in resumable} | {
        snapshot_path(output_dir, current).name}
    for f in (Path(output_dir) / SNAPSHOT_DIR).glob("step-*.safetensors"):
        if f.name not in keep:
            f.unlink(missing_ok=True)


def clear(output_dir) -> None:
    for f in (Path(output_dir) / SNAPSHOT_DIR).glob("step-*.safetensors"):
        f.unlink(missing_ok=True)


class RefSync(TrainerCallback):
    """After every `cfg.ref_sync.steps`-th step: mix the policy into `task.ref_model` (on every process), snapshot
    it (main process), log `ref_sync/syncs` (the number of updates so far)."""

    def __init__(self, task):
        self.task, self.sync = task, task.cfg.ref_sync

    def on_step_end(self, ctx):
        if ctx.step % self.sync.steps:
            return
        mix_(self.task.ref_model, ctx.model, self.sync.alpha)
        if ctx.is_main_process:
            save_snapshot(self.task.ref_model, ctx.output_dir, ctx.step)
            prune(ctx.output_dir, self.sync.steps, ctx.step)
        ctx.log({"ref_sync/syncs": ctx.step // self.sync.steps})


def callbacks(task) -> list:
    """[RefSync(task)] when the task's config has `ref_sync`, else []."""
    return [RefSync(task)] if getattr(task.cfg, "ref_sync", None) is not None else []
