"""One contender, one process: train for warm-up + measured steps and print one JSON line (prefix `RESULT `).

    python benchmarks/bench_worker.py CONTENDER REF_MODE WORKLOAD_JSON ASSETS_JSON

CONTENDER: isdaa-dpo | isdaa-is-dpo | isdaa-is-ipo | trl-dpo.  REF_MODE: pre (reference log-probs computed before
training) | mem (reference model in memory, one reference forward per step).

Both trainers are timed the same way: the wall time between consecutive "step end" callbacks (data loading,
collation, forward, backward, optimizer step and logging all included), for the steps after the warm-up. On a GPU
the callback synchronises the device first. Peak RSS is this process's `ru_maxrss` after training.

Also recorded: the tensors each step saves for its backward, by kind (`bench_common.MemoryProbe`), the RSS after
the imports (the runtime, before any model), and, with reference log-probs precomputed, the wall time of the
reference pass (isdaa's `reference.compute`, TRL's `_precompute_ref_logps`).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import MemoryProbe, Workload, current_rss_mb, peak_rss_mb, set_threads, sync  # noqa: E402

CONTENDERS = ("isdaa-dpo", "isdaa-is-dpo", "isdaa-is-ipo", "trl-dpo")
REF_MODES = ("pre", "mem")


class StepClock:
    """Records the time of every step end; `durations()` are the measured steps' wall times. Closes each step of
    `probe` (a MemoryProbe), counting it when measured."""

    def __init__(self, device: str, probe: MemoryProbe | None = None, warmup: int = 0):
        self.device, self.probe, self.warmup = device, probe, warmup
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []  # process CPU time (all threads): robust to other processes, unlike wall

    def tick(self) -> None:
        sync(self.device)
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        if self.probe is not None:
            self.probe.end_step(measured=len(self.ends) > self.warmup)

    def durations(self, warmup: int, cpu: bool = False) -> list[float]:
        # ends[k] is the end of step k+1; step k+1's duration is ends[k] - ends[k-1]
        ends = self.cpu_ends if cpu else self.ends
        return [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:])]


class PassTimer:
    """Wall time of the calls of `obj.name` (the reference pass), wrapped in place."""

    def __init__(self, obj, name: str, when=lambda *a, **k: True):
        self.seconds, self.calls = 0.0, 0
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if when(*args, **kwargs):
                    self.seconds += time.perf_counter() - t0
                    self.calls += 1

        setattr(obj, name, timed)


# --------------------------------------------------------------------------------------------------
# TRL: DPOTrainer with loss_type=sigmoid (the benchmark peer; never imported by isdaa)


def run_trl(work: Workload, assets: dict, ref_mode: str, tmp: Path, clock: StepClock) -> PassTimer:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    timer = PassTimer(DPOTrainer, "_precompute_ref_logps")

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    rows = [json.loads(line) for line in open(assets["data_path"])]
    model = AutoModelForCausalLM.from_pretrained(assets["model_dir"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(assets["model_dir"])
    args = DPOConfig(
        output_dir=str(tmp / "trl"),
        per_device_train_batch_size=work.batch_size,
        gradient_accumulation_steps=1,
        max_steps=work.steps,
        learning_rate=work.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        beta=work.beta,
        loss_type=["sigmoid"],
        max_length=work.prompt_len + work.response_len,
        precompute_ref_log_probs=ref_mode == "pre",
        logging_steps=1,  # TRL's default logging cadence is not the point; isdaa also logs every step
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=work.device == "cpu",
        bf16=work.dtype == "bfloat16",  # TRL defaults to bf16=True: set explicitly, same dtype for everyone
        gradient_checkpointing=work.gradient_checkpointing,  # TRL defaults to True; set as isdaa's
        gradient_checkpointing_kwargs={"use_reentrant": False},  # isdaa's kind
        seed=work.seed,
        torch_compile=work.compile,
        disable_tqdm=True,
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Clock()]
    )
    trainer.train()
    return timer


# --------------------------------------------------------------------------------------------------
# isdaa: the real engine, `isdaa.api.train(cfg, callbacks=...)`, timed by its step-end callback


def run_isdaa(work: Workload, assets: dict, method: str, ref_mode: str, tmp: Path, clock: StepClock) -> PassTimer:
    from isdaa_adapter import isdaa_train  # the one place that knows the engine's config names

    from isdaa.train import reference

    # the pass over the training data (not the start-of-training check on a sample, which reports nothing)
    timer = PassTimer(reference, "compute", when=lambda *a, **k: k.get("report", True))
    isdaa_train(work, assets, method, ref_mode, tmp / "isdaa", on_step_end=clock.tick)
    return timer


def main(argv: list[str]) -> None:
    contender, ref_mode, work_json, assets_json = argv
    if contender not in CONTENDERS or ref_mode not in REF_MODES:
        raise SystemExit(f"unknown contender/ref mode {contender!r}/{ref_mode!r}")
    work = Workload.from_json(work_json)
    assets = json.loads(assets_json)
    set_threads(work.threads)
    import torch  # noqa: F401  (the runtime, measured before any model)
    import transformers  # noqa: F401

    if contender == "trl-dpo":
        import trl  # noqa: F401
    else:
        import isdaa.train  # noqa: F401
    rss_start = current_rss_mb()
    probe = MemoryProbe(assets.get("vocab_size", work.vocab_size))
    clock = StepClock(work.device, probe, work.warmup_steps)
    with tempfile.TemporaryDirectory(prefix="isdaa-bench-") as d, probe.hooks():
        tmp = Path(d)
        t0 = time.perf_counter()
        if contender == "trl-dpo":
            timer = run_trl(work, assets, ref_mode, tmp, clock)
        else:
            timer = run_isdaa(work, assets, contender.removeprefix("isdaa-"), ref_mode, tmp, clock)
        total = time.perf_counter() - t0
    step_s = clock.durations(work.warmup_steps)
    if len(step_s) != work.measure_steps:
        raise SystemExit(f"{contender}: expected {work.measure_steps} measured steps, got {len(step_s)}")
    out = {"contender": contender, "ref_mode": ref_mode, "step_s": step_s, "peak_rss_mb": peak_rss_mb(),
           "total_s": total, "rss_start_mb": rss_start, "saved_mb": probe.peak_mb(),
           "cpu_step_s": clock.durations(work.warmup_steps, cpu=True)}
    if ref_mode == "pre" and timer.calls:
        out["ref_pass_s"] = timer.seconds
    if contender.startswith("isdaa-"):
        import isdaa

        out["isdaa_from"] = str(Path(isdaa.__file__).parent)
    if work.device.startswith("cuda"):
        import torch

        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
