"""Drive isdaa's real preference trainer (`isdaa.api.train(cfg, callbacks)`) on the benchmark workload.

The only file of the benchmark that knows isdaa's config names. Settings mirror the TRL contender: one optimizer
step per `batch_size` pairs (micro batch = batch, no accumulation), constant learning rate without warm-up,
gradient clipping at 1.0, gradient checkpointing as the workload says (off by default), logging every step, no
intermediate checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

REF_LOGPS = {"pre": "precompute", "mem": "on_the_fly"}


def isdaa_config(work, assets: dict, method: str, ref_mode: str, out_dir: Path, micro_batch_size: int | None = None):
    from isdaa.config import load_config

    mixed = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[work.dtype]
    return load_config(
        {
            "method": method,
            "beta": work.beta,
            "model": {"name_or_path": assets["model_dir"], "dtype": "fp32",
                      "gradient_checkpointing": work.gradient_checkpointing},
            "data": {
                "train": assets["data_path"],
                "max_length": work.prompt_len + work.response_len,
                "max_prompt_length": work.prompt_len,
            },
            "optim": {"lr": work.lr, "scheduler": "constant", "warmup_steps": 0, "max_grad_norm": 1.0},
            "output_dir": str(out_dir),
            "seed": work.seed,
            "max_steps": work.steps,
            "batch_size": work.batch_size,
            "micro_batch_size": micro_batch_size or work.batch_size,
            "mixed_precision": mixed,
            "compile": work.compile,
            "logging_steps": 1,
            "save_resume_state": False,
            "progress": False,
            "num_threads": work.threads,
            "ref_logps": REF_LOGPS[ref_mode],
            "ref_cache_dir": str(out_dir / "ref_cache"),
        },
        kind="pref",
    )


def isdaa_train(work, assets: dict, method: str, ref_mode: str, out_dir: Path,
                on_step_end: Callable[[], None], micro_batch_size: int | None = None) -> dict:
    """Run `isdaa.api.train` and call `on_step_end()` after every optimizer step (the benchmark's clock)."""
    from isdaa.api import train
    from isdaa.train.callbacks import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, ctx):
            on_step_end()

    cfg = isdaa_config(work, assets, method, ref_mode, out_dir, micro_batch_size)
    return train(cfg, callbacks=[Clock()], overwrite=True)
