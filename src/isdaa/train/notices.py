"""Said once at the start of a run: the defaults that differ from TRL's (a TRL user's config leaves them
unset and gets isdaa's), and bf16 on a CPU that computes it slowly (measured, not guessed)."""

from __future__ import annotations

import time
import warnings

BF16_SLOW = 1.5   # bf16 / fp32 matmul time above which bf16 on this CPU is called slow
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags of native bf16 arithmetic


def default_differences(cfg) -> list[str]:
    """`key value (TRL: trl_key value)` for each isdaa default that differs from TRL's and that `cfg` kept:
    neither set by the user (`given_keys`, recorded by `load_config`; a warmup ratio counts for the warmup
    steps) nor changed since."""
    import dataclasses

    from isdaa.trl_compat import DEFAULT_DIFFERENCES

    given = set(getattr(cfg, "given_keys", ()))
    if "optim.warmup_ratio" in given:
        given.add("optim.warmup_steps")
    out = []
    for dotted, (trl_key, trl_default) in DEFAULT_DIFFERENCES.items():
        if dotted in given:
            continue
        value = cfg
        *parents, leaf = dotted.split(".")
        for part in parents:
            value = getattr(value, part, None)
        fields = {f.name: f for f in dataclasses.fields(value)} if dataclasses.is_dataclass(value) else {}
        if leaf not in fields:
            continue
        f = fields[leaf]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if getattr(value, leaf) == default:
            out.append(f"{dotted} {default} (TRL: {trl_key} {trl_default})")
    return out


def cpu_bf16_flags() -> list[str]:
    """The native-bf16 flags /proc/cpuinfo lists for this CPU ([] elsewhere or when it has none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [f for f in BF16_FLAGS if f in flags]


def bf16_matmul_ratio(n: int = 256, reps: int = 5) -> float:
    """Time of an (n, n) @ (n, n) matmul in bf16 over the same in float32, on this CPU (best of `reps`;
    a few milliseconds)."""
    import torch

    def best(dtype):
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
        a @ b  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    return best(torch.bfloat16) / max(best(torch.float32), 1e-9)


def bf16_cpu_warning(cfg, device) -> str | None:
    """A warning when the run computes in bf16 on a CPU where bf16 is measured slow, with the number."""
    wants = getattr(cfg, "mixed_precision", None) == "bf16" or cfg.model.dtype == "bf16"
    if not wants or getattr(device, "type", str(device)) != "cpu":
        return None
    ratio = bf16_matmul_ratio()
    if ratio < BF16_SLOW:
        return None
    flags = cpu_bf16_flags()
    why = f"it has {', '.join(flags)}" if flags else f"it lacks {' / '.join(BF16_FLAGS)}"
    return (f"bf16 on this CPU is slow: a 256x256 matmul took {ratio:.1f}x as long in bf16 as in float32 (measured "
            f"now; {why}); set mixed_precision: no (TRL: bf16: false) to train in float32, faster")


def at_start(cfg, accelerator, write=print) -> None:
    """The start-of-run notices: the bf16 warning (always, as a warning), and, on the main process of a run
    that shows progress, the TRL default differences as one line."""
    message = bf16_cpu_warning(cfg, accelerator.device)
    if message:
        warnings.warn(message, stacklevel=3)
    if accelerator.is_main_process and cfg.progress:
        diffs = default_differences(cfg)
        if diffs:
            write("isdaa defaults that differ from TRL's (set them to match): " + "; ".join(diffs))
