"""Checkpoints and the run's final model: which steps get one, where they go (TRL's layout), how one is
written (atomically), and resume.

Layout (TRL's; docs/ARCHITECTURE.md "Run directory"):

    RUN/                        the final model (save_pretrained, safetensors) + tokenizer + model card,
                                trainer_state.json (transformers' TrainerState: global_step, log_history, ...)
                                and isdaa_state.json (its completion marker: the step, the files)
    RUN/checkpoint-N/           the model at step N + tokenizer + trainer_state.json (log_history up to N),
                                and, when resumable, optimizer.pt / scheduler.pt / rng-<rank>.pt (torch.save,
                                read back with weights_only=True; sharded runs: accelerate_state/), and
                                isdaa_state.json (isdaa's resume state: step, examples seen, epoch, counters)

Runs written before this layout (`checkpoints/step-XXXXXXXX/` with isdaa's state in trainer_state.json,
`final/`) stay readable: listed, evaluated and resumed alike.

Every folder is written under a temporary name and renamed, so a kill never leaves a half checkpoint
that resume would trust. The marker, written last, lists every file of the folder with its size
(`files`); resume only trusts a folder whose marker parses and whose files are all present at those
sizes (a truncated or missing file makes the folder non-resumable: resume falls back to an older
resumable checkpoint, or to step 0, and says so).
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
PREFIX = "checkpoint-"                 # RUN/checkpoint-N (TRL's name)
STATE = "isdaa_state.json"             # isdaa's state and file manifest: the completion marker
HF_STATE = "trainer_state.json"        # transformers' TrainerState (global_step, log_history, ...)
LEGACY_DIR, LEGACY_FINAL = "checkpoints", "final"  # runs written before TRL's layout
FINAL_TMP = ".final.tmp"


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
    """RUN/checkpoint-N."""
    return Path(output_dir) / f"{PREFIX}{step}"


def folder_step(path) -> int | None:
    """The step a checkpoint folder's name says (checkpoint-N, or a legacy step-XXXXXXXX), else None."""
    name = Path(path).name
    for prefix in (PREFIX, "step-"):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return int(name[len(prefix):])
    return None


def checkpoint_folders(output_dir) -> list[Path]:
    """RUN/checkpoint-* and legacy RUN/checkpoints/step-* folders, sorted by step (complete or not)."""
    out = Path(output_dir)
    found = [*out.glob(f"{PREFIX}*"), *(out / LEGACY_DIR).glob("step-*")]
    return sorted((p for p in found if p.is_dir() and folder_step(p) is not None), key=folder_step)


def has_marker(path) -> bool:
    """Whether a checkpoint folder was completely written (its marker exists)."""
    path = Path(path)
    return (path / STATE).is_file() or (path / HF_STATE).is_file() and path.parent.name == LEGACY_DIR


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


def _rng_file(accelerator) -> str:
    return f"rng-{accelerator.process_index}.pt"


def save_checkpoint(path: Path, model, tokenizer, accelerator, trainer_state: dict,
                    optimizer=None, scheduler=None, hf_state: dict | None = None) -> Path:
    """Write a checkpoint folder atomically (temporary folder, then rename). Resumable when an
    optimizer is given. With `hf_state` (the loop's checkpoints): trainer_state.json is transformers'
    TrainerState and isdaa's `trainer_state` goes to isdaa_state.json, the marker; without it (e.g.
    best_by_drift/), trainer_state.json holds `trainer_state` and is the marker."""
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
        torch.save(rng_state(), tmp / _rng_file(accelerator))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if hf_state is not None:
            _write_hf_state(tmp / HF_STATE, hf_state)
        marker = STATE if hf_state is not None else HF_STATE
        atomic_write_json(tmp / marker, {**trainer_state, "resumable": resumable, "files": file_manifest(tmp)})
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    accelerator.wait_for_everyone()
    return path


def _write_hf_state(path: Path, hf_state: dict) -> None:
    """As transformers' TrainerState.save_to_json writes it (indent 2, sorted keys)."""
    from isdaa.io import atomic_write_text

    atomic_write_text(path, json.dumps(hf_state, indent=2, sort_keys=True) + "\n")


def save_final(output_dir, model, tokenizer, accelerator, trainer_state: dict, hf_state: dict) -> None:
    """The final model, tokenizer, trainer_state.json (transformers') and isdaa_state.json (the marker,
    listing the model's files) at the output root, where `from_pretrained(output_dir)` finds them. Written
    into a temporary folder, then moved file by file; the marker is removed first and written last, so a
    kill in between leaves a root that `final_complete` does not trust (and the run saves it again)."""
    out = Path(output_dir)
    tmp = out / FINAL_TMP
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    save_model(tmp, model, tokenizer, accelerator)
    if accelerator.is_main_process:
        old = _root_files(out)
        for name in (STATE, HF_STATE):
            (out / name).unlink(missing_ok=True)
        for name in old:  # the previous final model's files (a resumed run): none may linger
            (out / name).unlink(missing_ok=True)
        files = file_manifest(tmp)
        for name in files:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, out / name)
        shutil.rmtree(tmp, ignore_errors=True)
        _write_hf_state(out / HF_STATE, hf_state)
        atomic_write_json(out / STATE, {**trainer_state, "final": True, "files": files})
        shutil.rmtree(out / LEGACY_FINAL, ignore_errors=True)  # a resumed legacy run: superseded
    accelerator.wait_for_everyone()


def _root_files(out: Path) -> list[str]:
    try:
        return list(json.loads((out / STATE).read_text(encoding="utf-8")).get("files") or [])
    except (OSError, ValueError):
        return []


def final_complete(output_dir) -> bool:
    """Whether the output root holds a completely written final model (or a legacy final/)."""
    out = Path(output_dir)
    try:
        state = json.loads((out / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return (out / LEGACY_FINAL / HF_STATE).is_file()
    return all((out / name).is_file() and (out / name).stat().st_size == size
               for name, size in (state.get("files") or {}).items())


def final_model_dir(output_dir) -> Path | None:
    """Where a run's final model is: the output root (TRL's layout), a legacy final/, else None."""
    out = Path(output_dir)
    if (out / STATE).is_file():
        return out
    return out / LEGACY_FINAL if (out / LEGACY_FINAL).is_dir() else None


def remove_final(output_dir) -> None:
    """Delete the final model from the output root (the files its marker lists) and a legacy final/."""
    out = Path(output_dir)
    for name in [*_root_files(out), STATE, HF_STATE]:
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / LEGACY_FINAL, ignore_errors=True)


def read_state(path) -> dict:
    """isdaa's state of a checkpoint folder: isdaa_state.json, else (legacy runs, best_by_drift/) the
    trainer_state.json that held it."""
    path = Path(path)
    name = STATE if (path / STATE).is_file() else HF_STATE
    return json.loads((path / name).read_text(encoding="utf-8"))


def checkpoint_info(path) -> dict:
    """{"step", "examples_seen", "epoch"} of a checkpoint folder or a final model folder, whatever wrote
    it: isdaa_state.json, a legacy trainer_state.json, or transformers' alone (global_step, epoch)."""
    path = Path(path)
    try:
        state = read_state(path)
    except (OSError, ValueError):
        state = {}
    if "step" not in state and "global_step" in state:  # transformers' TrainerState
        state = {"step": state["global_step"], "epoch": state.get("epoch")}
    step = state.get("step", folder_step(path))
    return {"step": None if step is None else int(step), "examples_seen": state.get("examples_seen"),
            "epoch": state.get("epoch")}


def file_manifest(folder: Path) -> dict:
    """{relative path: size in bytes} of every file under `folder` but the markers."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in (STATE, HF_STATE)}


def check_complete(path) -> str | None:
    """None when checkpoint `path` is complete and resumable, else why not."""
    path = Path(path)
    marker = STATE if (path / STATE).exists() or path.parent.name != LEGACY_DIR else HF_STATE
    try:
        state = json.loads((path / marker).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {marker} (completion marker)"
    except (ValueError, OSError) as err:
        return f"unreadable {marker} ({err})"
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
    for path in reversed(checkpoint_folders(output_dir)):
        why = check_complete(path)
        if why is None:
            return path
        if why != "holds no resume state" and report is not None:
            report(f"--resume: ignoring checkpoint {path.name}: {why}")
    return None


def resume_point(output_dir, resume_from) -> Path | None:
    """The checkpoint a run resumes from: `resume_from` True -> the latest resumable one in output_dir
    (None: start from step 0); a path -> that folder, which must be complete and resumable, and, when
    it is a checkpoint of this run, its latest (a later one would be a continuation this resume abandons)."""
    if resume_from is True or resume_from in ("true", "True"):
        return latest_resumable(output_dir)
    path = Path(resume_from)
    why = check_complete(path) if path.is_dir() else "not a folder"
    if why is not None:
        raise ValueError(f"resume_from_checkpoint {resume_from}: not a resumable checkpoint ({why})")
    later = [p.name for p in checkpoint_folders(output_dir) if folder_step(p) > (folder_step(path) or 0)
             and p.resolve() != path.resolve()]
    if later and path.resolve().parent in (Path(output_dir).resolve(), Path(output_dir).resolve() / LEGACY_DIR):
        raise ValueError(f"resume_from_checkpoint {resume_from}: {', '.join(later)} are later checkpoints of this run; "
                         "remove them to continue from this one, or resume from the latest "
                         "(resume_from_checkpoint: true)")
    return path


def remove_stale_temporaries(output_dir) -> None:
    """Temporary folders of writes cut by a kill (`.checkpoint-*.tmp`, `.final.tmp`, legacy
    `checkpoints/.step-*.tmp`) are never trusted; drop them."""
    out = Path(output_dir)
    for tmp in [*out.glob(f".{PREFIX}*.tmp"), *out.glob(f"{LEGACY_DIR}/.step-*.tmp"), out / FINAL_TMP]:
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
    rng_file = path / _rng_file(accelerator)
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=True))
    return read_state(path)


def prune_resume_state(output_dir, keep: int | None, accelerator) -> None:
    """Delete optimizer/scheduler/RNG files from all but the latest `keep` resumable checkpoints
    (None: every checkpoint stays resumable, as TRL's)."""
    if not accelerator.is_main_process or keep is None:
        return
    resumable = [p for p in checkpoint_folders(output_dir) if has_marker(p) and read_state(p).get("resumable")]
    for path in resumable[:-keep] if keep else resumable:
        # marker first: a kill mid-prune leaves a folder that claims nothing it no longer holds
        state = read_state(path)
        files = {k: v for k, v in (state.get("files") or {}).items()
                 if k.split("/")[0] not in RESUME_FILES and not k.startswith("rng-")}
        marker = STATE if (path / STATE).is_file() else HF_STATE
        atomic_write_json(path / marker, {**state, "resumable": False, "files": files})
        for name in RESUME_FILES:
            target = path / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for f in path.glob("rng-*.pt"):
            f.unlink()


def rotate(output_dir, limit: int | None, accelerator, keep=()) -> list[str]:
    """`save_total_limit` (TRL's): delete the oldest checkpoint folders beyond `limit` (never one in
    `keep`, e.g. the one resume would use). Returns the names deleted."""
    if not accelerator.is_main_process or limit is None:
        return []
    folders = [p for p in checkpoint_folders(output_dir) if has_marker(p)]
    keep = {Path(k).resolve() for k in keep}
    doomed = [p for p in folders[: max(0, len(folders) - limit)] if p.resolve() not in keep]
    for path in doomed:
        shutil.rmtree(path)
    return [p.name for p in doomed]
