"""The lab's preference step, A/B: this tree's engine against another `src/` (e.g. main's), in one alternating run.

    python benchmarks/bench_lab_step.py --alt-src /work/main/src                  # DPO and IS-DPO, 1 thread
    python benchmarks/bench_lab_step.py --alt-src /work/main/src --methods is-dpo --rounds 3 --steps 40

Drives the real trainer exactly as the lab does: the lab's model (`KeyTokenTask().save_initial_model`, the
tiny Llama of every lab run), its tokenizer and task (pairs of the key-token summary task with pi_ref's
log-probs as behavior columns, like `pairs_consistent.jsonl`), and the lab's own config builder
(`isdaa.lab.pipeline.pref_config` for the `paper` preset: batch 64 pairs, micro batch 64, max length 28,
logging every step, precomputed reference log-probs, 1 thread), with only `max_steps`, `save_fractions`
and `output_dir` replaced. Each (contender, method) runs in its own process; processes alternate
A B, B A, ... over `--rounds`. Timing: the wall time between consecutive step-end callbacks after the
warm-up steps (data, forward, backward, optimizer, metrics and logging all in); the table reports the
median over all measured steps of all rounds, the ratio alt/this (> 1: this tree is faster), the load
average before and after, and the largest per-step loss difference between the two trees (same seed, same
data order: the losses must agree to float32 round-off).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(HERE))
from bench_common import median, thread_env  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--alt-src", default=None, help="another isdaa src/ folder (e.g. /work/main/src) run as 'alt'")
    p.add_argument("--methods", default="dpo,is-dpo", help="comma list of preference methods (default dpo,is-dpo)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--steps", type=int, default=30, help="timed steps per process")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the lab uses 1)")
    p.add_argument("--n-pairs", type=int, default=2048, help="training pairs generated")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field in THIS tree's runs only (e.g. model.attn_implementation=eager)")
    p.add_argument("--alt-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a top-level config field in the ALT tree's runs (e.g. micro_batch_size=32: the "
                        "round-off noise floor of the loss comparison)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--timeout", type=float, default=1800)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------
# Assets: the lab's model and pairs, written where `pref_config` expects them


def build_assets(root: Path, n_pairs: int, seed: int = 0) -> None:
    """A LabDir at `root` with `ref_model` (the lab's random-init model) and the training pairs file
    (prompt, chosen, rejected, chosen_logps / rejected_logps = pi_ref's summed response log-probs)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isdaa.data import collate_pref, tokenize_pref
    from isdaa.io import atomic_write_jsonl
    from isdaa.lab import pipeline
    from isdaa.lab.keytoken import KeyTokenTask
    from isdaa.logprobs import response_logps

    lab = pipeline.LabDir(root)
    task = KeyTokenTask()
    task.save_initial_model(lab.ref_model, seed=seed)
    model, tok = AutoModelForCausalLM.from_pretrained(lab.ref_model), AutoTokenizer.from_pretrained(lab.ref_model)
    rng = random.Random(seed)
    rows = []
    for prompt in task.make_prompts(n_pairs, seed + 1):
        c, r = task.sample_demonstration(prompt, rng), task.sample_demonstration(prompt, rng)
        while r == c:
            r = task.sample_demonstration(prompt, rng)
        rows.append({"prompt": prompt, "chosen": c, "rejected": r})
    ex = tokenize_pref(rows, tok, task.max_length, task.max_prompt_length, drop_identical=False)
    with torch.no_grad():
        for s in range(0, len(ex), 256):
            b = collate_pref(ex[s: s + 256], tok.pad_token_id)
            lp = response_logps(model.eval(), b["input_ids"], b["attention_mask"], b["response_mask"])
            n = b["n_pairs"]
            for row, c, r in zip(rows[s: s + 256], lp[:n].tolist(), lp[n:].tolist()):
                row.update(chosen_logps=c, rejected_logps=r)
    atomic_write_jsonl(lab.golden_train / pipeline.TRAIN_PAIRS, rows)


# --------------------------------------------------------------------------------------------------
# Worker: one (tree, method) in one process


def lab_config(root: Path, method: str, steps: int, out_dir: Path, overrides: dict | None = None):
    """The lab's own preference config (paper preset, beta 0.1, seed 0, its lr), `steps` steps, no
    intermediate checkpoints."""
    from isdaa.lab import pipeline
    from isdaa.lab.presets import RunSpec, get_preset

    preset = get_preset("paper")
    cfg = pipeline.pref_config(pipeline.LabDir(root), preset, RunSpec(method, 0.1, 0, 2e-3))
    cfg = dataclasses.replace(cfg, max_steps=steps, save_fractions=[], output_dir=str(out_dir))
    for key, value in (overrides or {}).items():  # `section.field` reaches into a nested config (model.*)
        section, _, field = key.rpartition(".")
        if section:
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{field: value})})
        else:
            cfg = dataclasses.replace(cfg, **{field: value})
    return cfg


def worker(root: str, method: str, warmup: int, steps: int, out_dir: str, overrides: str) -> dict:
    import torch

    from isdaa.api import train
    from isdaa.io import read_jsonl
    from isdaa.train.callbacks import TrainerCallback

    ends: list[float] = []
    cpu_ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, ctx):
            ends.append(time.perf_counter())
            cpu_ends.append(time.process_time())

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = lab_config(Path(root), method, warmup + steps, Path(out_dir), json.loads(overrides))
    t0 = time.perf_counter()
    summary = train(cfg, callbacks=[Clock()], overwrite=True)
    wall = time.perf_counter() - t0
    step_s = [b - a for a, b in zip(ends[warmup - 1: -1], ends[warmup:])]
    cpu_s = [b - a for a, b in zip(cpu_ends[warmup - 1: -1], cpu_ends[warmup:])]
    records = [r for r in read_jsonl(Path(out_dir) / "metrics.jsonl") if "loss" in r]
    losses, grad_norms = [r["loss"] for r in records], [r["grad_norm"] for r in records]
    import isdaa

    return {"step_s": step_s, "cpu_s": cpu_s, "first_step_s": ends[0] - t0, "train_wall_s": wall, "losses": losses,
            "grad_norms": grad_norms,
            "status": summary["status"], "isdaa_from": str(Path(isdaa.__file__).parent)}


# --------------------------------------------------------------------------------------------------
# Driver


def _run_worker(src: Path, args, root: Path, method: str, out_dir: Path, overrides: dict) -> dict:
    env = thread_env(args.threads)
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(HERE)])
    code = (f"import json, bench_lab_step as b; print('RESULT ' + json.dumps(b.worker({str(root)!r}, {method!r}, "
            f"{args.warmup_steps}, {args.steps}, {str(out_dir)!r}, {json.dumps(overrides)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=HERE,
                          timeout=args.timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise RuntimeError(f"worker {src} {method} failed ({proc.returncode})")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value) if value else None
        except json.JSONDecodeError:  # a bare word: a string (model.attn_implementation=eager)
            out[key] = value
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="isdaa-labstep-"))
    root = workdir / "lab"
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    print(f"# lab step A/B  {started:%Y-%m-%d %H:%M} UTC  load {load_before[0]:.2f}  workdir {workdir}", flush=True)
    if not (root / "data").exists():
        build_assets(root, args.n_pairs)
    methods = [m for m in args.methods.split(",") if m]
    trees = [("this", SRC.resolve(), parse_overrides(args.set))]
    if args.alt_src:
        trees.append(("alt", Path(args.alt_src).resolve(), parse_overrides(args.alt_set)))
    jobs = [(t, m) for m in methods for t in trees]
    results: dict = {}
    for rnd in range(args.rounds):
        for (label, src, over), method in (jobs if rnd % 2 == 0 else jobs[::-1]):
            out = _run_worker(src, args, root, method, workdir / f"run-{label}-{method}-{rnd}", over)
            results.setdefault((label, method), []).append(out)
            print(f"  round {rnd + 1} {label:5s} {method:7s} median step {1e3 * median(out['step_s']):7.1f} ms  "
                  f"(CPU {1e3 * median(out['cpu_s']):6.1f} ms)  "
                  f"first step {out['first_step_s']:.2f} s  train() {out['train_wall_s']:.1f} s  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    load_after = os.getloadavg()
    lines = ["| method | tree | median step ms, wall (min-max) | median step ms, CPU | first step s (setup incl.) | "
             "alt / this, wall | alt / this, CPU | step-1 grad norm, rel. diff | max abs loss diff (steps) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows = []
    for method in methods:
        for label, src, _ in trees:
            runs = results[(label, method)]
            steps = [s for r in runs for s in r["step_s"]]
            cpu = median([s for r in runs for s in r["cpu_s"]])
            row = {"method": method, "tree": label, "src": str(src), "median_step_s": median(steps),
                   "median_cpu_s": cpu, "min": min(steps), "max": max(steps),
                   "first_step_s": median([r["first_step_s"] for r in runs])}
            if args.alt_src and label == "this":
                alt = results[("alt", method)]
                row["alt_over_this"] = median([s for r in alt for s in r["step_s"]]) / row["median_step_s"]
                row["alt_over_this_cpu"] = median([s for r in alt for s in r["cpu_s"]]) / cpu
                row["max_loss_diff"] = max(abs(a - b) for r, q in zip(runs, alt)
                                           for a, b in zip(r["losses"], q["losses"]))
                # step 1 runs on identical weights (policy = reference): the only step where the two trees'
                # computations are comparable exactly; later steps inherit Adam's amplified round-off
                row["step1_grad_norm_rel_diff"] = max(abs(r["grad_norms"][0] / q["grad_norms"][0] - 1)
                                                      for r, q in zip(runs, alt))
            rows.append(row)
            lines.append(f"| {method} | {label} | {1e3 * row['median_step_s']:.1f} ({1e3 * row['min']:.1f}-"
                         f"{1e3 * row['max']:.1f}) | {1e3 * cpu:.1f} | {row['first_step_s']:.2f} | "
                         f"{row.get('alt_over_this', float('nan')):.2f} | "
                         f"{row.get('alt_over_this_cpu', float('nan')):.2f} | "
                         f"{row.get('step1_grad_norm_rel_diff', float('nan')):.1e} | "
                         f"{row.get('max_loss_diff', float('nan')):.1e} |")
    head = (f"Lab step (tiny Llama of the lab, 64 pairs x <= 28 tokens, paper-preset config), "
            f"{args.threads} thread(s), "
            f"{args.rounds} alternating rounds x {args.steps} timed steps after {args.warmup_steps} warm-up; "
            f"this = {SRC.resolve()} {parse_overrides(args.set) or ''}, alt = {args.alt_src} "
            f"{parse_overrides(args.alt_set) or ''}; "
            f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after. {started:%Y-%m-%d %H:%M} UTC.")
    text = head + "\n\n" + "\n".join(lines)
    print("\n" + text)
    report = {"args": vars(args), "rows": rows, "load_before": load_before, "load_after": load_after,
              "runs": {f"{k[0]}/{k[1]}": v for k, v in results.items()}}
    (workdir / "results.json").write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
