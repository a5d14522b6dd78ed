"""The chunked LM head against the model's own (whole) head on one device: values, gradients, peak memory, time.

    python benchmarks/head_check.py --device cuda --dtype bfloat16        # a GPU lease (gpu_check_issue22.sh)
    python benchmarks/head_check.py --device cpu --hidden 256 --pairs 2   # a local dry run

A random-init Llama at a real vocabulary (default 128,256) and a batch of concatenated pairs go through
`isdaa.logprobs.response_logps` (forward and backward of a weighted sum), once with `head_chunk_mb=0` (the
model's head projects all N response positions: (N, V) logits and their softmax kept for the backward) and once
with the chunked head (`--chunk-mb`). Prints the largest value difference, the relative difference of the head's
and of the first layer's gradients, the peak memory of each (GPU: the allocator's peak; CPU: the RSS growth,
in separate processes) and the median time of `--reps` steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_common import set_threads, vocab_size  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"),
                   help="autocast dtype (float32: none)")
    p.add_argument("--vocab-size", default="llama3")
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--response-len", type=int, default=512)
    p.add_argument("--chunk-mb", type=float, default=256.0)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one side, print JSON
    return p.parse_args(argv)


def run_one(args, chunk_mb: float) -> dict:
    import torch

    from isdaa.logprobs import response_logps
    from isdaa.tiny import build_tiny_llama

    set_threads(args.threads)
    dev = torch.device(args.device)
    V = vocab_size(args.vocab_size)
    model = build_tiny_llama(vocab_size=V, hidden_size=args.hidden, num_layers=args.layers,
                             num_heads=max(1, args.hidden // 128), intermediate_size=4 * args.hidden,
                             max_position_embeddings=args.prompt_len + args.response_len + 8).to(dev).train()
    g = torch.Generator().manual_seed(0)
    B, P, R = args.pairs, args.prompt_len, args.response_len
    ids = torch.randint(4, V, (2 * B, P + R), generator=g)
    ids[B:, :P] = ids[:B, :P]
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, P:] = True
    ids, resp = ids.to(dev), resp.to(dev)
    attn = torch.ones_like(ids)
    weights = torch.linspace(-1.0, 1.0, 2 * B, device=dev)
    bf16 = args.dtype == "bfloat16"
    ctx = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else torch.autocast(dev.type, enabled=False)

    def step():
        model.zero_grad(set_to_none=True)
        with ctx:
            logps = response_logps(model, ids, attn, resp, head_chunk_mb=chunk_mb)
        (logps * weights).sum().backward()
        return logps.detach()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    from bench_common import current_rss_mb

    step()  # warm-up
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / 2**20 if dev.type == "cuda" else current_rss_mb()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        logps = step()
        sync()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        from bench_common import peak_rss_mb

        peak = peak_rss_mb() - base
    return {"logps": logps.float().cpu().tolist(), "time_s": sorted(times)[len(times) // 2], "peak_mb": peak,
            "head_grad": model.lm_head.weight.grad.float().cpu().flatten()[:: 97].tolist(),
            "layer_grad": model.model.layers[0].mlp.up_proj.weight.grad.float().cpu().flatten()[:: 31].tolist(),
            "n_rows": int(resp[:, 1:].sum())}


def main(argv=None):
    args = parse_args(argv)
    if args.one is not None:
        print("RESULT " + json.dumps(run_one(args, float(args.one))), flush=True)
        return
    out = {}
    for name, mb in (("whole head", 0.0), (f"chunked ({args.chunk_mb:g} MiB)", args.chunk_mb)):
        args_again = argv if argv is not None else sys.argv[1:]
        proc = subprocess.run([sys.executable, __file__, *args_again, "--one", str(mb)], capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"{name} failed")
        out[name] = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    (wn, w), (cn, c) = out.items()

    def rel(a, b):
        num = max(abs(x - y) for x, y in zip(a, b))
        return num / max(max(abs(y) for y in b), 1e-30)

    V = vocab_size(args.vocab_size)
    print(f"{args.device}, {args.dtype}, vocabulary {V:,}, hidden {args.hidden}, {args.layers} layers, "
          f"{args.pairs} pairs x ({args.prompt_len}+{args.response_len}): N = {w['n_rows']:,} response positions, "
          f"whole logits {w['n_rows'] * V * 4 / 2**20:,.0f} MiB in float32\n")
    print("| head | step s (median) | peak memory MiB (above the model) |\n|---|---:|---:|")
    for name, r in out.items():
        print(f"| {name} | {r['time_s']:.3f} | {r['peak_mb']:,.0f} |")
    print(f"\nchunked / whole: time {c['time_s'] / w['time_s']:.2f}x, "
          f"peak memory {c['peak_mb'] / max(w['peak_mb'], 1e-9):.2f}x; "
          f"max |logp difference| {max(abs(x - y) for x, y in zip(c['logps'], w['logps'])):.2e} "
          f"(|logp| ~ {max(abs(y) for y in w['logps']):,.0f}); "
          f"gradient rel. difference: head {rel(c['head_grad'], w['head_grad']):.1e}, "
          f"layer 0 {rel(c['layer_grad'], w['layer_grad']):.1e}")


if __name__ == "__main__":
    main()
