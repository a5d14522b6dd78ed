"""Where a training step's time goes: torch.profiler over the measured steps of one contender.

    python benchmarks/profile_step.py --size 10m --contender isdaa-dpo --ref-mode pre
    python benchmarks/profile_step.py --size 10m --contender trl-dpo --ref-mode mem --sort cpu_time_total
    python benchmarks/profile_step.py --size lab --contender isdaa-is-dpo --threads 1   # the lab's step

Runs the real trainer (isdaa's `train(cfg)` or TRL's DPOTrainer) exactly as bench_train.py does, on the same
generated workload (`--size lab`: the lab's model, pairs and config, as bench_lab_step.py), with the
profiler recording the steps after the warm-up (the step-end callback advances the profiler's schedule).
Prints the top operators by self time, then the same grouped by input shape (which matmul is which).
`--trace` writes a Chrome trace (open in chrome://tracing or ui.perfetto.dev).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_common import SIZES, Workload, build_assets, set_threads  # noqa: E402
from bench_worker import CONTENDERS, REF_MODES  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="10m", choices=[*SIZES, "lab"])
    p.add_argument("--contender", default="isdaa-dpo", choices=CONTENDERS)
    p.add_argument("--ref-mode", default="pre", choices=REF_MODES)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--response-len", type=int, default=128)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="profiled steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--top", type=int, default=25, help="rows of the operator table")
    p.add_argument("--sort", default="self_cpu_time_total", help="profiler sort key")
    p.add_argument("--trace", default=None, help="write a Chrome trace to this path")
    p.add_argument("--workdir", default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    set_threads(args.threads)

    if args.size == "lab":
        return profile_lab(args)
    work = Workload(size=args.size, vocab_size=args.vocab_size, prompt_len=args.prompt_len,
                    response_len=args.response_len, batch_size=args.batch_size, warmup_steps=args.warmup_steps,
                    measure_steps=args.steps, threads=args.threads, device=args.device, dtype=args.dtype)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="isdaa-prof-"))
    assets = build_assets(work, workdir / args.size)
    prof = _profile(args)
    with prof:
        if args.contender == "trl-dpo":
            from transformers import TrainerCallback

            class Step(TrainerCallback):
                def on_step_end(self, *a, **k):
                    prof.step()

            _run_trl_with(work, assets, args.ref_mode, workdir, Step())
        else:
            from isdaa_adapter import isdaa_train

            isdaa_train(work, assets, args.contender.removeprefix("isdaa-"), args.ref_mode, workdir / "run",
                        on_step_end=prof.step)
    _print(prof, args)
    return prof


def _profile(args):
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    # the profiler's schedule advances at every step end: skip the warm-up, record `steps`
    return profile(activities=activities, schedule=schedule(wait=args.warmup_steps - 1, warmup=1, active=args.steps,
                                                            repeat=1), record_shapes=True)


def profile_lab(args):
    """The lab's preference step (bench_lab_step.py's assets and the lab's own config)."""
    import bench_lab_step

    from isdaa.api import train
    from isdaa.train.callbacks import TrainerCallback

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="isdaa-prof-"))
    if not (workdir / "lab" / "data").exists():
        bench_lab_step.build_assets(workdir / "lab", 1024)
    prof = _profile(args)

    class Step(TrainerCallback):
        def on_step_end(self, ctx):
            prof.step()

    cfg = bench_lab_step.lab_config(workdir / "lab", args.contender.removeprefix("isdaa-"),
                                    args.warmup_steps + args.steps, workdir / "run")
    with prof:
        train(cfg, callbacks=[Step()], overwrite=True)
    _print(prof, args)
    return prof


def _print(prof, args):
    sort = args.sort if not args.device.startswith("cuda") else args.sort.replace("cpu", "cuda")
    table = prof.key_averages().table(sort_by=sort, row_limit=args.top, max_name_column_width=48)
    print(f"# {args.contender} ({args.ref_mode}), {args.size}, {args.steps} profiled steps, {args.threads} threads")
    print(table)
    by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=12,
                                                                  max_name_column_width=32, max_shapes_column_width=60)
    print(by_shape)
    if args.trace:
        prof.export_chrome_trace(args.trace)


def _run_trl_with(work, assets, ref_mode, workdir, callback):
    """bench_worker.run_trl with one more callback (the profiler's step)."""
    import bench_worker
    from transformers import Trainer

    orig_init = Trainer.__init__

    def init(self, *a, **k):
        k["callbacks"] = list(k.get("callbacks") or []) + [callback]
        orig_init(self, *a, **k)

    Trainer.__init__ = init
    try:
        bench_worker.run_trl(work, assets, ref_mode, workdir)
    finally:
        Trainer.__init__ = orig_init


if __name__ == "__main__":
    main()
