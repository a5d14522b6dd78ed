"""Checkpoints: which steps get one, how one is written (atomically), and resume.

A checkpoint is `checkpoints/step-XXXXXXXX/`: save_pretrained model (safetensors) + tokenizer +
trainer_state.json, plus, when resumable, optimizer.pt / scheduler.pt / rng-<rank>.pt written with
torch.save and read back with torch.load(weights_only=True). Under FSDP / DeepSpeed the sharded
optimizer is saved by `accelerator.save_state` into `accelerate_state/` instead. The folder is
written under a temporary name and renamed, so a kill never leaves a half checkpoint that resume
would trust. trainer_state.json, written last, is the completion marker: it lists every file of the
folder with its size (`files`), and resume only trusts a folder whose marker parses and whose files
are all present at those sizes (a truncated or missing file makes the folder non-resumable: resume
falls back to an older resumable checkpoint, or to step 0, and says so).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from isdaa.io import atomic_write_json

RESUME_FILES = ("optimizer.pt", "scheduler.pt", "accelerate_state")


def checkpoint_steps(cfg, total_steps: int) -> set[int]:
    """Steps to checkpoint at: every save_steps, fractions of total_steps (rounded up), global example
    counts (the first step whose examples reach the count), and 0 when save_initial."""
    steps = set()
    if cfg.save_steps:
        steps.update(range(cfg.save_steps, total_steps + 1, cfg.save_steps))
    steps.update(min(total_steps, max(1, math.ceil(f * total_steps - 1e-9))) for f in cfg.save_fractions)
    steps.update(min(total_steps, max(1, math.ceil(int(e) / cfg.batch_size))) for e in cfg.save_examples)
    if cfg.save_initial:
        steps.add(0)
    return steps


def step_dir(output_dir, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:08d}"


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def save_model(path: Path, model, tokenizer, accelerator) -> None:
    """save_pretrained (safetensors) + tokenizer; every process must call it (sharded state gather)."""
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        with _quiet_transformers_bars():  # "Writing model shards" would break the training bar's line
            unwrapped.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(path)


@contextmanager
def _quiet_transformers_bars():
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def rng_state() -> dict:
    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached))
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model, tokenizer, accelerator, trainer_state: dict,
                    optimizer=None, scheduler=None) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then rename). Resumable when an
    optimizer is given."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_model(tmp, model, tokenizer, accelerator)
    resumable = optimizer is not None
    if resumable:
        if _sharded(accelerator):
            accelerator.save_state(str(tmp / "accelerate_state"))
        elif accelerator.is_main_process:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if accelerator.is_main_process:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / "trainer_state.json",
                          {**trainer_state, "resumable": resumable, "files": file_manifest(tmp)})
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return path


def read_state(path) -> dict:
    return json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))


def file_manifest(folder: Path) -> dict:
    """{relative path: size in bytes} of every file under `folder` but trainer_state.json."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "trainer_state.json"}


def check_complete(path) -> str | None:
    """None when checkpoint `path` is complete and resumable, else why not."""
    path = Path(path)
    try:
        state = read_state(path)
    except FileNotFoundError:
        return "no trainer_state.json (completion marker)"
    except (ValueError, OSError) as err:
        return f"unreadable trainer_state.json ({err})"
    if not state.get("resumable"):
        return "holds no resume state"
    for name, size in (state.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, the marker says {size} (truncated or altered)"
    return None


def latest_resumable(output_dir, report=print) -> Path | None:
    """The complete resumable checkpoint with the highest step; incomplete ones are reported and skipped."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    for path in sorted(root.glob("step-*"), reverse=True):
        if not path.is_dir():
            continue
        why = check_complete(path)
        if why is None:
            return path
        if why != "holds no resume state" and report is not None:
            report(f"--resume: ignoring checkpoint {path.name}: {why}")
    return None


def remove_stale_temporaries(output_dir) -> None:
    """Temporary folders of writes cut by a kill (`.step-*.tmp`, `.final.tmp`) are never trusted; drop them."""
    out = Path(output_dir)
    for tmp in [*out.glob("checkpoints/.step-*.tmp"), out / ".final.tmp"]:
        shutil.rmtree(tmp, ignore_errors=True)
    for tmp in out.glob(".*.tmp"):  # atomic_path leftovers (metrics, summary, config)
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def load_resume_state(path: Path, model, optimizer, scheduler, accelerator) -> dict:
    """Load model weights, optimizer, scheduler and RNG from a resumable checkpoint. A checkpoint resumes
    under the kind of launch that wrote it: sharded (FSDP / DeepSpeed: `accelerate_state/`) or not
    (`optimizer.pt`, any number of processes); a mismatch is refused (ValueError) with the way out."""
    path = Path(path)
    sharded = (path / "accelerate_state").exists()
    if sharded != _sharded(accelerator):
        wrote, now = ("a sharded (FSDP / DeepSpeed) launch", "is not sharded") if sharded else \
            ("an unsharded launch (one process or DDP)", f"is sharded ({accelerator.distributed_type.value})")
        raise ValueError(f"--resume: checkpoint {path} was written by {wrote} and this launch {now}: its "
                         "optimizer state cannot be read here. Resume with the launch that wrote it, or start a "
                         f"new run from its weights (model.name_or_path: {path}).")
    if sharded:
        accelerator.load_state(str(path / "accelerate_state"))
    else:
        from safetensors.torch import load_file

        unwrapped = accelerator.unwrap_model(model)
        state = {}
        for f in sorted(path.glob("*.safetensors")):
            state.update(load_file(f))
        if hasattr(unwrapped, "peft_config"):  # LoRA: only the adapter is saved
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(unwrapped, state)
        else:
            missing, unexpected = unwrapped.load_state_dict(state, strict=False)
            tied = bool(getattr(unwrapped.config, "tie_word_embeddings", False))
            real_missing = [k for k in missing if not (tied and "lm_head" in k)]
            if unexpected or real_missing:
                raise RuntimeError(f"checkpoint {path} does not match the model: missing {real_missing[:5]}, "
                                   f"unexpected {unexpected[:5]}")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return read_state(path)


def prune_resume_state(output_dir, keep: int, accelerator) -> None:
    """Delete optimizer/scheduler/RNG files from all but the latest `keep` resumable checkpoints
    (dense early checkpoints keep their weights, not 2x the model size in Adam moments)."""
    if not accelerator.is_main_process:
        return
    root = Path(output_dir) / "checkpoints"
    resumable = [p for p in sorted(root.glob("step-*")) if (p / "trainer_state.json").exists()
                 and read_state(p).get("resumable")]
    for path in resumable[:-keep] if keep else resumable:
        # marker first: a kill mid-prune leaves a folder that claims nothing it no longer holds
        state = read_state(path)
        files = {k: v for k, v in (state.get("files") or {}).items()
                 if k.split("/")[0] not in RESUME_FILES and not k.startswith("rng-")}
        atomic_write_json(path / "trainer_state.json", {**state, "resumable": False, "files": files})
        for name in RESUME_FILES:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for f in path.glob("rng-*.pt"):
            f.unlink()
