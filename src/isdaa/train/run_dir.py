"""The run folder's lifecycle: refuse, clear or continue an output_dir, and read its summary.

Layout (TRL's): the final model, tokenizer and card at OUTPUT_DIR, `checkpoint-N/` folders
(train/checkpoint.py), config.yaml, metrics.jsonl, summary.json, trackers/, eval_generations.jsonl.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from isdaa.config import RUNTIME_KEYS, to_dict
from isdaa.io import atomic_write_jsonl, read_jsonl
from isdaa.train import checkpoint as ckpt


def prepare_run_dir(cfg, resume: bool, overwrite: bool) -> bool:
    """Refuse / clear / continue an output dir. Returns True when there is something to resume."""
    out = Path(cfg.output_dir)
    summary, config = out / "summary.json", out / "config.yaml"
    has_run = config.exists() or bool(ckpt.checkpoint_folders(out)) or ckpt.final_model_dir(out) is not None
    if overwrite:
        for path in [*ckpt.checkpoint_folders(out), out / ckpt.LEGACY_DIR, out / "eval"]:
            shutil.rmtree(path, ignore_errors=True)
        ckpt.remove_final(out)
        for name in ("summary.json", "config.yaml", "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)
        return False
    if resume:
        if config.exists():
            from isdaa.config import load_run_config

            old, new = to_dict(load_run_config(config)), to_dict(cfg)
            diff = sorted(k for k in set(old) | set(new) if k not in RUNTIME_KEYS and old.get(k) != new.get(k))
            if diff:
                raise ValueError(f"--resume: the config differs from the run's config.yaml in {diff}")
        return has_run
    if summary.exists() and read_summary(out).get("status") == "finished":
        raise FileExistsError(f"{out} holds a finished run (summary.json); use --overwrite to replace it "
                              "or --resume to continue it")
    if has_run:
        raise FileExistsError(f"{out} holds an unfinished run; use --resume to continue it or --overwrite")
    return False


def read_summary(out) -> dict:
    return json.loads((Path(out) / "summary.json").read_text(encoding="utf-8"))


def cut_logs(out: Path, step: int) -> int:
    """A run (re)starting at `step`: metrics.jsonl and the live eval's eval_generations.jsonl keep the records
    up to `step` (later ones are replayed); returns the last step metrics.jsonl had logged (sent to trackers)."""
    logged = 0
    for name in ("metrics.jsonl", "eval_generations.jsonl"):
        path = out / name
        if path.exists():
            rows = read_jsonl(path, tolerate_partial_tail=True)
            atomic_write_jsonl(path, [r for r in rows if r.get("step", 0) <= step])
            if name == "metrics.jsonl":
                logged = max([r.get("step", 0) for r in rows], default=0)
    return logged
