"""Offline DAA training speed: isdaa (DPO, IS-DPO, IS-IPO) against TRL's DPOTrainer, side by side.

    python benchmarks/bench_train.py --quick                 # smoke run, < 2 minutes on 2 CPU cores
    python benchmarks/bench_train.py --sizes 10m,40m --rounds 2 --write-readme
    python benchmarks/bench_train.py --sizes 10m --vocab-size llama3 --prompt-len 256 --response-len 256 --batch-size 4

Every contender trains the same random-init Llama on the same generated pairs with the same batch size,
sequence length, dtype and threads, once with reference log-probs precomputed (`pre`) and once with the
reference model in memory (`mem`). Each (contender, ref mode) runs in its own process, the processes
alternate A B C D, D C B A, ... over rounds, and each process times only the steps after its warm-up
(see bench_worker.py). The table reports tokens/s (median of all measured steps, all rounds), peak RSS
(max over rounds), the ratios isdaa/TRL and IS/DPO, and the fraction of the machine's measured matmul rate
reached, counting 6 * P * tokens FLOPs per step for the policy plus 2 * P * tokens for an in-memory
reference, P = parameters that take part in matmuls (all but the input embedding table), tokens = the
necessary ones: each pair's prompt once and both responses (`bench_common.necessary_fraction`).
A second table breaks each process's peak memory down: weights, gradients and AdamW state (computed), what the
step saves for its backward by kind (measured: logits, attention, other activations), the runtime (RSS after the
imports) and the rest (transient buffers, allocator); with reference log-probs precomputed, the reference pass's
throughput is printed under it.

TRL is a benchmark peer only (`pip install -e .[bench]`); isdaa never imports it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_common import (  # noqa: E402
    SIZES,
    VOCABS,
    Workload,
    median,
    necessary_fraction,
    square_n,
    step_tokens,
    thread_env,
    vocab_size,
)
from bench_worker import CONTENDERS, REF_MODES  # noqa: E402

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10m,40m",
                   help=f"comma list of model sizes among {','.join(SIZES)} (default 10m,40m)")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list (default: all four)")
    p.add_argument("--ref-modes", default="pre,mem", help="comma list of pre (precomputed) / mem (in memory)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per contender (default 2)")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per process (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per process (default 5)")
    p.add_argument("--batch-size", type=int, default=8, help="preference pairs per optimizer step (default 8)")
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens (default 128)")
    p.add_argument("--response-len", type=int, default=128, help="response tokens, EOS included (default 128)")
    p.add_argument("--vary-lengths", action="store_true",
                   help="responses of random length in [L/2, L] (padding matters); default fixed lengths")
    p.add_argument("--vocab-size", default="8192",
                   help="tokenizer/model vocabulary: a number or a model family's "
                        f"({', '.join(f'{k} {v}' for k, v in VOCABS.items())}); default 8192")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="both trainers recompute activations in the backward (non-reentrant checkpointing)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPU cores)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="float32, or bfloat16 mixed precision (autocast) for both trainers")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile in both trainers: isdaa `compile: true` (its decoder layers), TRL "
                        "`torch_compile=True` (the model); the warm-up steps take the compilation")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n^3 matmul timed for the rate")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's nominal bf16 peak for the MFU column (default: known GPUs by name; none on CPUs)")
    p.add_argument("--workdir", default=None, help="where models, data and results.json go (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (< 2 min on 2 cores): 10m, 64+64 tokens, batch 4, 1+3 steps, 1 round, pre only")
    p.add_argument("--write-readme", action="store_true", help="record the table in benchmarks/README.md")
    p.add_argument("--alt-src", default=None,
                   help="a patched copy of isdaa's src/ folder: every isdaa contender also runs from it, as NAME+alt "
                        "(A/B of an engine change in the same alternating run)")
    p.add_argument("--verbose", action="store_true", help="show the workers' stderr")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.ref_modes, args.rounds = "10m", "pre", 1
        args.warmup_steps, args.steps, args.batch_size = 1, 3, 4
        args.prompt_len = args.response_len = 64
    args.threads = args.threads or os.cpu_count()
    try:
        args.vocab_size = vocab_size(args.vocab_size)
    except ValueError as err:
        p.error(str(err))
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.ref_modes = [m for m in args.ref_modes.split(",") if m]
    for name, vals, known in (("size", args.sizes, SIZES), ("contender", args.contenders, CONTENDERS),
                              ("ref mode", args.ref_modes, REF_MODES)):
        bad = [v for v in vals if v not in known]
        if bad:
            p.error(f"unknown {name} {bad}; choose from {list(known)}")
    if args.warmup_steps < 1 or args.steps < 1 or args.rounds < 1:
        p.error("--warmup-steps, --steps and --rounds must be >= 1")
    return args


# --------------------------------------------------------------------------------------------------
# Subprocesses


def _python(code_or_script: list[str], threads: int, timeout: float, verbose: bool, src: str | None = None) -> str:
    env = thread_env(threads)
    if src:  # import isdaa from this folder instead of the installed package
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, *code_or_script], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=HERE)
    if verbose or proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(code_or_script[:3])} failed with exit code {proc.returncode}")
    return proc.stdout


def measure_matmul(args) -> dict:
    """fp32 and (where supported) bf16 matmul rate, in a process with the benchmark's threads."""
    code = (
        "import json, torch; from bench_common import matmul_rate, set_threads, square_n; "
        f"set_threads({args.threads}); d={args.device!r}; "
        f"out={{'float32': matmul_rate(d, 'float32', {args.matmul_size})}}\n"
        "bf16 = torch.cuda.is_bf16_supported() if d.startswith('cuda') else True\n"
        f"if bf16: out['bfloat16'] = matmul_rate(d, 'bfloat16', square_n(d, 'bfloat16', {args.matmul_size}), reps=3)\n"
        "print('RESULT ' + json.dumps(out))"
    )
    return _result(_python(["-c", code], args.threads, args.timeout, args.verbose))


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError("worker printed no RESULT line")
    return json.loads(lines[-1][len("RESULT "):])


def build_assets(work: Workload, out_dir: Path, args) -> dict:
    code = ("import json, pathlib; from bench_common import Workload, build_assets; "
            f"w = Workload.from_json({work.to_json()!r}); "
            f"print('RESULT ' + json.dumps(build_assets(w, pathlib.Path({str(out_dir)!r}))))")
    return _result(_python(["-c", code], args.threads, args.timeout, args.verbose))


def mean_pair_tokens(data_path: str, work: Workload) -> float:
    """Real (unpadded) tokens per pair: both sequences, prompt + response + EOS (word count = token count)."""
    n = tot = 0
    with open(data_path) as f:
        for line in f:
            r = json.loads(line)
            tot += 2 * len(r["prompt"].split()) + len(r["chosen"].split()) + len(r["rejected"].split()) + 2
            n += 1
    return tot / n


# --------------------------------------------------------------------------------------------------
# Table


# Nominal dense bf16 peaks (no sparsity), FLOP/s, for the MFU column of GPU runs (`--peak-tflops` overrides)
GPU_PEAKS = {"H100": 989.4e12, "H200": 989.4e12, "H800": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def nominal_peak(args) -> float | None:
    """The GPU's nominal bf16 peak (FLOP/s) for MFU: `--peak-tflops`, else GPU_PEAKS by the device's name."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if not args.device.startswith("cuda"):
        return None
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return next((v for k, v in GPU_PEAKS.items() if k in name), None)


def summarize(results: list[dict], work: Workload, assets: dict, rates: dict, tokens_per_step: float,
              peak: float | None = None) -> list[dict]:
    rows = []
    rate = rates.get(work.dtype, rates["float32"])
    for key in dict.fromkeys((r["contender"], r["ref_mode"]) for r in results):
        runs = [r for r in results if (r["contender"], r["ref_mode"]) == key]
        steps = [s for r in runs for s in r["step_s"]]
        step = median(steps)
        # the necessary work: 6 P per token for the policy (+ 2 P for an in-memory reference), each prompt once
        per_param = 6 + (2 if key[1] == "mem" else 0)
        flops = per_param * assets["matmul_params"] * tokens_per_step * necessary_fraction(work)
        rows.append({
            "contender": key[0], "ref_mode": key[1], "step_s": step, "step_min_s": min(steps), "step_max_s": max(steps),
            "tokens_per_s": tokens_per_step / step, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "flops_per_step": flops, "matmul_fraction": flops / step / rate, "n_steps": len(steps),
            **({"mfu": flops / step / peak} if peak else {}),
            **({"peak_gpu_mb": max(r["peak_gpu_mb"] for r in runs)} if "peak_gpu_mb" in runs[0] else {}),
            **({"saved_mb": max((r["saved_mb"] for r in runs), key=lambda d: sum(d.values())),
                "rss_start_mb": min(r["rss_start_mb"] for r in runs)} if "saved_mb" in runs[0] else {}),
            **({"ref_pass_s": median([r["ref_pass_s"] for r in runs])} if all("ref_pass_s" in r for r in runs) else {}),
            **({"cpu_step_s": median([s for r in runs for s in r["cpu_step_s"]])}
               if all("cpu_step_s" in r for r in runs) else {}),
        })
    by = {(r["contender"], r["ref_mode"]): r for r in rows}
    for r in rows:
        trl = by.get(("trl-dpo", r["ref_mode"]))
        suffix = "+alt" if r["contender"].endswith("+alt") else ""
        dpo = by.get(("isdaa-dpo" + suffix, r["ref_mode"]))
        r["vs_trl"] = r["tokens_per_s"] / trl["tokens_per_s"] if trl else None
        r["rss_vs_trl"] = r["peak_rss_mb"] / trl["peak_rss_mb"] if trl else None
        if "peak_gpu_mb" in r:
            r["gpu_vs_trl"] = r["peak_gpu_mb"] / trl["peak_gpu_mb"] if trl else None
        r["step_vs_dpo"] = r["step_s"] / dpo["step_s"] if dpo and r["contender"].startswith("isdaa-is") else None
    return rows


def format_table(rows: list[dict], size: str, assets: dict, work: Workload) -> str:
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    head = (f"**{size}** ({assets['params'] / 1e6:.1f}M params, {assets['matmul_params'] / 1e6:.1f}M in matmuls), "
            f"{work.batch_size} pairs x ({work.prompt_len}+{work.response_len}) tokens per step, vocabulary "
            f"{work.vocab_size:,}, {work.dtype}{' compiled' if work.compile else ''}"
            f"{', gradient checkpointing' if work.gradient_checkpointing else ''}, "
            f"{work.threads} threads, {work.device}\n\n")
    gpu = "peak_gpu_mb" in rows[0]  # GPU runs: the allocator's peak beside the host's RSS
    mfu = "mfu" in rows[0]  # model FLOPs / step time / the GPU's nominal bf16 peak
    lines = ["| contender | ref | tokens/s | step s (min-max) | peak RSS MiB | isdaa/TRL tok/s | RSS/TRL "
             + ("| peak GPU MiB | GPU mem/TRL " if gpu else "") + "| step / DPO | % matmul rate |"
             + (" MFU |" if mfu else ""),
             "|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if gpu else "") + "---:|---:|"
             + ("---:|" if mfu else "")]
    for r in rows:
        is_trl = r["contender"] == "trl-dpo"
        gpu_cols = (f"{r['peak_gpu_mb']:,.0f} | {fmt(r['gpu_vs_trl'], '.2f') if not is_trl else '1'} | "
                    if gpu else "")
        lines.append(
            f"| {r['contender']} | {r['ref_mode']} | {r['tokens_per_s']:,.0f} | {r['step_s']:.3f} "
            f"({r['step_min_s']:.3f}-{r['step_max_s']:.3f}) | {r['peak_rss_mb']:,.0f} | "
            f"{fmt(r['vs_trl'], '.2f') if not is_trl else '1'} | "
            f"{fmt(r['rss_vs_trl'], '.2f') if not is_trl else '1'} | {gpu_cols}"
            f"{fmt(r['step_vs_dpo'], '.3f')} | {100 * r['matmul_fraction']:.0f}% |"
            + (f" {100 * r['mfu']:.1f}% |" if mfu else "")
        )
    return head + "\n".join(lines) + "\n"


def fmt_cpu(r: dict) -> str:
    """Median process CPU seconds per step (all threads): less sensitive than wall time to other processes on
    the machine, but it counts threads spinning while they wait for each other."""
    return f"{r['cpu_step_s']:.2f}" if "cpu_step_s" in r else "-"


def format_breakdown(rows: list[dict], work: Workload, assets: dict, tokens_per_step: float) -> str:
    """Each process's peak memory, in MiB: weights + gradients + AdamW state (16 B per parameter, float32;
    + 4 B per parameter for an in-memory reference model), what the step saves for its backward (measured,
    by kind), the runtime (RSS after the imports; 0 on a GPU, whose peak is the allocator's) and the rest
    (transient buffers, allocator slack) = peak - the others; then the reference passes' throughput."""
    rows = [r for r in rows if "saved_mb" in r]
    if not rows:
        return ""
    gpu = "peak_gpu_mb" in rows[0]
    lines = ["Peak memory, MiB" + (" (GPU)" if gpu else "") + ": weights + grads + AdamW (computed), saved for the "
             "backward (measured), runtime, rest = peak - the others; median process CPU s per step (all threads)\n",
             "| contender | ref | weights+grads+Adam | saved: logits | saved: attention | saved: other | runtime "
             "| rest | peak | CPU s/step |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        static = assets["params"] * (16 + (4 if r["ref_mode"] == "mem" else 0)) / 2**20
        saved = r["saved_mb"]
        runtime = 0.0 if gpu else r["rss_start_mb"]
        peak = r["peak_gpu_mb"] if gpu else r["peak_rss_mb"]
        rest = peak - static - sum(saved.values()) - runtime
        lines.append(f"| {r['contender']} | {r['ref_mode']} | {static:,.0f} | {saved['logits']:,.0f} | "
                     f"{saved['attention']:,.0f} | {saved['activations']:,.0f} | {runtime:,.0f} | {rest:,.0f} | "
                     f"{peak:,.0f} | {fmt_cpu(r)} |")
    passes = [r for r in rows if "ref_pass_s" in r]
    if passes:
        tokens_per_pair = tokens_per_step / work.batch_size
        lines.append("\nReference pass (`pre`, " + f"{work.n_pairs} pairs): " + "; ".join(
            f"{r['contender']} {r['ref_pass_s']:.1f} s = {work.n_pairs / r['ref_pass_s']:,.1f} pairs/s, "
            f"{work.n_pairs * tokens_per_pair / r['ref_pass_s']:,.0f} tokens/s" for r in passes) + ".")
    return "\n".join(lines) + "\n"


def cpuinfo_field(name: str) -> str | None:
    """The first `name : value` line of /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(name)), None)
    except OSError:
        return None


def cpu_flags() -> str:
    """The CPU features that decide the matmul rate: AVX-512, its bf16 dot products, AMX."""
    line = cpuinfo_field("flags")
    if line is None:
        return "unknown"
    flags = set(line.split())
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(shown) + ("" if "amx_bf16" in flags else "; no AMX")


def machine_info(args) -> dict:
    import torch

    cpu = cpuinfo_field("model name") or platform.processor()
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_flags": cpu_flags()}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for mod in ("transformers", "trl", "accelerate"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        info["isdaa_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                              cwd=HERE).stdout.strip()
    except OSError:
        pass
    return info


def write_readme(text: str) -> None:
    path = HERE / "README.md"
    old = path.read_text() if path.exists() else f"# Benchmarks\n\n{README_START}\n{README_END}\n"
    if README_START not in old:
        old += f"\n{README_START}\n{README_END}\n"
    pre, rest = old.split(README_START, 1)
    post = rest.split(README_END, 1)[1]
    path.write_text(f"{pre}{README_START}\n{text}\n{README_END}{post}")


# --------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    import tempfile

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="isdaa-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    print(f"# isdaa training benchmark  {started:%Y-%m-%d %H:%M} UTC  load average {load_before[0]:.2f}  "
          f"workdir {workdir}", flush=True)
    rates = measure_matmul(args)
    print("matmul rate: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()), flush=True)
    report = {"args": {k: v for k, v in vars(args).items()}, "started": started.isoformat(), "sizes": {},
              "matmul_rate_start": rates}
    tables = []
    for size in args.sizes:
        work = Workload(size=size, vocab_size=args.vocab_size, prompt_len=args.prompt_len,
                        response_len=args.response_len, vary_lengths=args.vary_lengths, batch_size=args.batch_size,
                        warmup_steps=args.warmup_steps, measure_steps=args.steps, threads=args.threads,
                        device=args.device, dtype=args.dtype, compile=args.compile,
                        gradient_checkpointing=args.gradient_checkpointing)
        assets = build_assets(work, workdir / size, args)
        tokens_per_step = (mean_pair_tokens(assets["data_path"], work) * work.batch_size if work.vary_lengths
                           else step_tokens(work))
        jobs = [(c, c, m, None) for m in args.ref_modes for c in args.contenders]
        if args.alt_src:
            jobs += [(c + "+alt", c, m, args.alt_src) for m in args.ref_modes for c in args.contenders
                     if c.startswith("isdaa-")]
        results = []
        for rnd in range(args.rounds):
            order = jobs if rnd % 2 == 0 else jobs[::-1]
            for label, contender, mode, src in order:
                t0 = time.perf_counter()
                out = _result(_python(["bench_worker.py", contender, mode, work.to_json(), json.dumps(assets)],
                                      args.threads, args.timeout, args.verbose, src))
                results.append({**out, "contender": label, "round": rnd})
                with open(workdir / "runs.jsonl", "a") as f:  # survives an interrupted run
                    f.write(json.dumps({"size": size, **results[-1]}) + "\n")
                print(f"  {size} round {rnd + 1}/{args.rounds} {label:17s} {mode}: "
                      f"{tokens_per_step / median(out['step_s']):8,.0f} tokens/s  median step "
                      f"{median(out['step_s']):.3f} s  peak RSS {out['peak_rss_mb']:,.0f} MiB  "
                      f"(process {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.2f})", flush=True)
        rows = summarize(results, work, assets, rates, tokens_per_step)
        report["sizes"][size] = {"workload": json.loads(work.to_json()), "assets": assets, "runs": results,
                                 "rows": rows, "tokens_per_step": tokens_per_step}
        tables.append(format_table(rows, size, assets, work))
    rates_end = measure_matmul(args)
    # the better of the two measurements is the physical limit the fractions are computed against
    best = {k: max(rates[k], rates_end.get(k, 0)) for k in rates}
    for size, rep in report["sizes"].items():
        rep["rows"] = summarize(rep["runs"], Workload(**rep["workload"]), rep["assets"], best, rep["tokens_per_step"],
                                nominal_peak(args))
    tables = []
    for s in args.sizes:
        rep = report["sizes"][s]
        work = Workload(**rep["workload"])
        tables.append(format_table(rep["rows"], s, rep["assets"], work) + "\n"
                      + format_breakdown(rep["rows"], work, rep["assets"], rep["tokens_per_step"]))
    load_after = os.getloadavg()
    info = machine_info(args)
    report.update(matmul_rate_end=rates_end, matmul_rate=best, machine=info, load_before=load_before,
                  load_after=load_after)
    cmd = "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {info['cpu']} ({info['cores']} cores, {info['cpu_flags']}"
        f"{', ' + info['gpu'] if 'gpu' in info else ''}), torch {info['torch']}, transformers "
        f"{info['transformers']}, TRL {info['trl']}, isdaa {info.get('isdaa_commit', '?')}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after.\n"
        f"Matmul rate ({args.threads} threads): "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s ({square_n(args.device, k, args.matmul_size)}^3)"
                    for k, v in best.items())
        + f".\nCommand: `{cmd.strip()}`\n\n" + "\n".join(tables)
    )
    print("\n" + text)
    (workdir / "results.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"results: {workdir / 'results.json'}")
    if args.write_readme:
        write_readme(text)
        print("recorded in benchmarks/README.md")
    return report


if __name__ == "__main__":
    main()
