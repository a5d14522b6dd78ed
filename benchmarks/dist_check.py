"""Distributed launch check: one short preference run per accelerate config (configs/accelerate/*.yaml: ddp,
fsdp, deepspeed-zero2, deepspeed-zero3) against the same run in one process; prints a pass/fail table.

    python benchmarks/dist_check.py --out DIR            # on a GPU machine: min(GPUs, 4) processes per launch
    python benchmarks/dist_check.py --out DIR --cpu      # 2 gloo processes on the CPU (ddp, fsdp)

Every run: a tiny random-init Llama built here, float32 (`--mixed_precision no`: the comparison needs the
same arithmetic on both sides), is-dpo, global batch 8 = micro-batch 2 x accumulation x processes, `--steps`
optimizer steps, a live evaluation (KL, golden win rate) at the last step, checkpoints at the half and at
the end. Compared with the one-process run: loss, grad_norm, rewards/margins and is/ess at every step
(largest relative difference), the final weights (largest absolute difference) and the live eval's KL.
A sharded config (FSDP, DeepSpeed) must leave `accelerate_state/` in its checkpoints; with `--resume` it is
also resumed from the half-way checkpoint (later outputs removed, as after a kill) and must end with the
uninterrupted run's weights. With one GPU the launches run one process: the sharded code paths run, the
cross-process reductions do not (the table says so). DeepSpeed rows are skipped, with the reason, where
`import deepspeed` fails (the GPU image has none: carry its wheels, benchmarks/README.md).

Tolerances: CPU (deterministic kernels) weights 1e-5, metrics rel 1e-4 (tests/test_fsdp.py measures 2.2e-6 and
< 5e-6); GPU float32 weights 1e-4, metrics rel 1e-3 (atomics in some backward kernels change the order of
float32 sums from run to run; AdamW turns relative gradient noise into absolute weight noise of lr * noise).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
SHARDED = ("fsdp", "deepspeed-zero2", "deepspeed-zero3")
COMPARED = ("loss", "grad_norm", "rewards/margins", "is/ess")
REWARD_MODULE = "def count_good(prompts, responses):\n    return [float(r.split().count('good')) for r in responses]\n"


def pref_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": " ".join(f"w{rng.randrange(60)}" for _ in range(rng.randint(2, 6))),
             "chosen": f"good yes w{rng.randrange(60)}", "rejected": f"bad no w{rng.randrange(60)}"} for _ in range(n)]


def build_assets(work: Path) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    from transformers.utils import logging as hf_logging

    from isdaa.tiny import build_tiny_llama, build_word_tokenizer, save_tiny

    hf_logging.disable_progress_bar()

    tok = build_word_tokenizer(words=[f"w{i}" for i in range(60)] + ["good", "bad", "yes", "no"])
    model = build_tiny_llama(vocab_size=len(tok), hidden_size=64, num_layers=2, num_heads=4, seed=0,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model_dir = save_tiny(model, tok, work / "model")
    for name, rows in (("train.jsonl", pref_rows(64, 0)), ("eval.jsonl", pref_rows(8, 5))):
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "dist_reward.py").write_text(REWARD_MODULE)
    return {"model": str(model_dir), "train": str(work / "train.jsonl"), "eval": str(work / "eval.jsonl")}


def run_config(assets: dict, out: Path, steps: int) -> dict:
    return {"model": {"name_or_path": assets["model"]},
            "data": {"train": assets["train"], "max_length": 32, "max_prompt_length": 16},
            # SGD with momentum: the update is linear in the gradient, so weights differ by lr x the gradients'
            # round-off (AdamW's m / (sqrt(v) + eps) turns the round-off of a near-zero gradient entry into an
            # O(lr) difference: 1.2e-4 at lr 1e-2 after 4 steps, measured); the momentum buffer is the optimizer
            # state that resume must restore
            "optim": {"optimizer": "sgd", "sgd_momentum": 0.9, "lr": 0.5, "warmup_steps": 0},
            "output_dir": str(out), "ref_cache_dir": str(out) + "-cache",
            "batch_size": 8, "micro_batch_size": 2, "max_steps": steps, "logging_steps": 1,
            "save_steps": max(1, steps // 2), "resume_state_keep": 2, "progress": False, "num_threads": 1,
            "mixed_precision": "no", "seed": 0, "method": "is-dpo", "beta": 0.1,
            "eval": {"reward": "dist_reward:count_good", "prompts": assets["eval"], "every": steps, "n_prompts": 4,
                     "n": 2, "max_new_tokens": 6, "kl_samples": 2, "batch_size": 4}}


def write_config(cfg: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def environment(work: Path, cpu: bool) -> dict:
    path = os.pathsep.join(p for p in (str(work), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if cpu:
        env.update(CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="true")
    return env


def execute(cmd: list[str], env: dict, log: Path, timeout: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers: a hang ends here
            proc.wait()
            rc = 124
    return rc, time.perf_counter() - t0


def launch(name: str, config: Path, procs: int, env: dict, log: Path, timeout: int, *extra: str):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{name}.yaml"),
           "--num_processes", str(procs), "--mixed_precision", "no", "--main_process_port", str(port),
           "-m", "isdaa.cli", "train", "pref", "--config", str(config), *extra]
    return execute(cmd, env, log, timeout)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def max_diff(a: list[dict], b: list[dict]) -> float:
    """Largest |difference| of the COMPARED metrics (all O(1) here) over the steps."""
    diffs = [abs(x[k] - y[k]) for x, y in zip(a, b) for k in COMPARED if k in x and k in y]
    return max(diffs) if diffs and len(a) == len(b) else float("inf")


def max_abs_weights(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    if wa.keys() != wb.keys():
        return float("inf")
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def kl_diff(a: list[dict], b: list[dict]) -> float:
    ka = [r["eval/kl_k1"] for r in a if "eval/kl_k1" in r]
    kb = [r["eval/kl_k1"] for r in b if "eval/kl_k1" in r]
    return abs(ka[-1] - kb[-1]) if ka and kb else float("inf")


def resume_run(name: str, run: Path, config: dict, steps: int, procs: int, env: dict, args) -> tuple[str, float]:
    """Copy the finished run, remove what was written after the half-way checkpoint, resume under the same launch."""
    import yaml

    half, res = max(1, steps // 2), run.parent / f"{run.name}-resumed"
    shutil.rmtree(res, ignore_errors=True)
    shutil.copytree(run, res)
    for p in [res / "final", res / "summary.json", *[c for c in (res / "checkpoints").glob("step-*")
                                                      if int(c.name.split("-")[1]) > half]]:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    saved = yaml.safe_load((res / "config.yaml").read_text())
    write_config({**saved, "output_dir": str(res)}, res / "config.yaml")
    cfg_path = write_config({**config, "output_dir": str(res)}, run.parent / f"{name}-resumed.yaml")
    rc, _ = launch(name, cfg_path, procs, env, args.out / f"{name}-resumed.log", args.timeout, "--resume")
    if rc:
        return f"resume exit {rc}", float("inf")
    summary = json.loads((res / "summary.json").read_text())
    if summary.get("resumed_from_step") != half:
        return f"resumed from {summary.get('resumed_from_step')}, not {half}", float("inf")
    return "ok", max_abs_weights(run / "final", res / "final")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("dist-check-out"))
    ap.add_argument("--cpu", action="store_true", help="2 gloo processes on the CPU (ddp, fsdp)")
    ap.add_argument("--procs", type=int, default=0, help="processes per launch (default: CPU 2, GPU min(GPUs, 4))")
    ap.add_argument("--configs", default=",".join(sorted(p.stem for p in CONFIGS.glob("*.yaml"))))
    ap.add_argument("--resume", default=",".join(SHARDED), help="configs also resumed half-way ('' for none)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--timeout", type=int, default=240, help="seconds per launch")
    args = ap.parse_args()
    args.out = args.out.resolve()
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    import accelerate
    import torch

    gpus = 0 if args.cpu else torch.cuda.device_count()
    procs = args.procs or (2 if gpus == 0 else min(gpus, 4))
    device = "cpu (gloo)" if gpus == 0 else f"{gpus} x {torch.cuda.get_device_name(0)}"
    has_ds = importlib.util.find_spec("deepspeed") is not None
    ds_version = __import__("deepspeed").__version__ if has_ds else "not installed"
    print(f"Distributed check: torch {torch.__version__}, accelerate {accelerate.__version__}, deepspeed "
          f"{ds_version}; {procs} processes per launch on {device}; {args.steps} steps, float32")
    atol, mtol = (1e-5, 1e-5) if gpus == 0 else (1e-4, 1e-4)
    env = environment(work, cpu=gpus == 0)
    assets = build_assets(work)

    base = run_config(assets, work / "one", args.steps)
    rc, one_secs = execute([sys.executable, "-m", "isdaa.cli", "train", "pref", "--config",
                        str(write_config(base, work / "one.yaml"))], env, args.out / "one.log", args.timeout)
    if rc:
        print(f"the one-process run failed (exit {rc}); see {args.out / 'one.log'}")
        return 1
    one = read_metrics(work / "one")
    print(f"one process: {one_secs:.0f} s; tolerances: metrics abs {mtol:g}, weights abs {atol:g}, live KL abs 1e-3")
    print("\n| config | processes | verdict | loss/grad_norm/margins/ess abs | final weights abs | live KL abs "
          "| resumed = uninterrupted abs | seconds | note |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for name in [c for c in args.configs.split(",") if c]:
        row = {"config": name, "procs": procs}
        if name.startswith("deepspeed") and (gpus == 0 or not has_ds):
            row.update(verdict="SKIP", note="DeepSpeed needs GPUs" if gpus == 0 else
                       "deepspeed not installed (carry its wheels: benchmarks/README.md)")
            rows.append(print_row(row))
            continue
        run = work / name
        cfg = {**base, "output_dir": str(run), "ref_cache_dir": str(run) + "-cache"}
        rc, secs = launch(name, write_config(cfg, work / f"{name}.yaml"), procs, env, args.out / f"{name}.log",
                          args.timeout)
        row["seconds"] = round(secs, 1)
        if rc:
            row.update(verdict="FAIL", note=f"exit {rc} (hang killed)" if rc == 124 else f"exit {rc}; see {name}.log")
            rows.append(print_row(row))
            continue
        two = read_metrics(run)
        row.update(metric_abs=max_diff(one, two), weight_abs=max_abs_weights(work / "one" / "final", run / "final"),
                   kl_abs=kl_diff(one, two))
        sharded_state = all((c / "accelerate_state").is_dir() for c in (run / "checkpoints").glob("step-*"))
        problems = [p for p, bad in (("metrics", row["metric_abs"] > mtol), ("weights", row["weight_abs"] > atol),
                                     ("live-eval KL", row["kl_abs"] > 1e-3),
                                     ("no accelerate_state/", name in SHARDED and not sharded_state)) if bad]
        if name in args.resume.split(","):
            status, diff = resume_run(name, run, cfg, args.steps, procs, env, args)
            row["resume_abs"] = diff
            if status != "ok" or diff > atol:
                problems.append(f"resume: {status}, max |dw| {diff:.2g}")
        row["verdict"] = "FAIL" if problems else "PASS"
        row["note"] = "; ".join(problems) + ("" if procs > 1 else " (1 process: no cross-process reduction)")
        rows.append(print_row(row))
    (args.out / "dist.json").write_text(json.dumps({"device": device, "procs": procs, "rows": rows}, indent=1))
    print("\nDistributed check:", "PASS" if all(r["verdict"] != "FAIL" for r in rows) else "FAIL")
    return 0


def print_row(r: dict) -> dict:
    """One table row, printed as soon as the config is done (a time limit still leaves the rows so far)."""
    def num(k):
        return f"{r[k]:.2g}" if k in r else "-"

    print(f"| {r['config']} | {r['procs']} | {r['verdict']} | {num('metric_abs')} | {num('weight_abs')} | "
          f"{num('kl_abs')} | {num('resume_abs')} | {r.get('seconds', '-')} | {r.get('note', '')} |", flush=True)
    return r


if __name__ == "__main__":
    sys.exit(main())
