"""The matmul rate a harness model's own shapes reach: the ceiling for its "% matmul rate" column.

    python benchmarks/matmul_ceiling.py --size 40m --dtype bfloat16 --threads 2

`bench_train.py` divides a step's FLOPs by the rate of one large square matmul (2048^3 fp32, 1024^3 bf16 on
CPUs). A model's matmuls are narrower (K = hidden size), so even a step that did nothing but matmuls would
stay below 100%. This script times, with the harness's threads, every matmul of one training step of a
harness model at isdaa's packed-pair shapes, alone and back to back: forward X @ W, and the two backward
products dY @ W^T and dY^T @ X, for the q/k/v/o projections, the MLP's gate/up/down, and the LM head over the
response positions. It prints their FLOPs over their summed time, and that rate as a share of the square one.
Attention's score/value products are left out, as the harness's FLOP count leaves them out.
"""

from __future__ import annotations

import argparse
import time

from bench_common import SIZES, matmul_rate, set_threads, square_n


def step_shapes(size: str, pairs: int, prompt_len: int, response_len: int, vocab: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of every forward matmul of one step: packed rows [prompt, chosen, rejected], head on responses."""
    c = SIZES[size]
    h, f = c["hidden_size"], c["intermediate_size"]
    rows = pairs * (prompt_len + 2 * response_len)
    layer = [(rows, h, h)] * 4 + [(rows, h, f)] * 2 + [(rows, f, h)]
    return layer * c["num_layers"] + [(pairs * 2 * response_len, h, vocab)]


def time_shapes(shapes, dtype, reps: int) -> tuple[float, float]:
    """(FLOPs, seconds) of forward + both backward products of every shape, median of `reps` passes."""
    import torch

    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(0)
    ops = []
    for m, k, n in shapes:
        x, w, dy = (torch.randn(a, b, generator=g).to(dt) for a, b in ((m, k), (k, n), (m, n)))
        ops += [(x, w), (dy, w.t()), (dy.t(), x)]
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in ops)
    times = []
    for _ in range(reps + 1):  # the first pass warms up
        t0 = time.perf_counter()
        for a, b in ops:
            torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return flops, times[len(times) // 2]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="40m", choices=[s for s in SIZES if s != "tiny"])
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--response-len", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    set_threads(args.threads)
    n = square_n("cpu", args.dtype)  # the matmul bench_train.py divides by
    square = matmul_rate("cpu", args.dtype, n)
    shapes = step_shapes(args.size, args.pairs, args.prompt_len, args.response_len, args.vocab)
    flops, secs = time_shapes(shapes, args.dtype, args.reps)
    square = max(square, matmul_rate("cpu", args.dtype, n))  # before and after, the better: as bench_train.py
    rate = flops / secs
    print(f"{args.size} {args.dtype}, {args.threads} threads: square {n}^3 matmul {square / 1e9:.1f} GFLOP/s; "
          f"the step's {3 * len(shapes)} matmuls ({flops / 1e9:.1f} GFLOP) {rate / 1e9:.1f} GFLOP/s "
          f"= {rate / square:.0%} of the square rate")


if __name__ == "__main__":
    main()
