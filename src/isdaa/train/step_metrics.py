"""One optimizer step's metrics, reduced over its micro-batches and processes without a host sync per metric.

Per-pair means are weighted by each micro-batch's share of the step's units; `*_max` keys take maxima; the
batch-level weight metrics (`<prefix>/ess`, `<prefix>/top_share`) are recomputed from log-space sums of the
whole step's log-weights (`importance.log_weight_sums`), never averaged over parts. `to_floats` converts a
step's metrics once per logging step (one host sync; the reduction over processes is collective), and
`self_normalizer` gives the factor n / sum w of the whole step that self-normalized IS weights divide by.
"""

from __future__ import annotations

import math

import torch

from isdaa.importance import (
    SCALED_METRICS,
    combine_log_weight_sums,
    log_mean_weight,
    log_weight_sums,
    pooled_weight_metrics,
)


class StepMetrics:
    """Accumulates one optimizer step's metric tensors over micro-batches, on the device (no sync):
    means weighted by the micro-batch's share of units, maxima for `*_max` keys. The log-weights behind
    batch-level metrics (`<prefix>/ess`, `<prefix>/top_share`; the loss's `log_weights`) are reduced to
    their sums (`importance.log_weight_sums`), so those metrics are the whole batch's, not a mean over
    micro-batches; `to_floats` combines the sums of every process."""

    def __init__(self):
        self.values: dict[str, torch.Tensor] = {}
        self.log_weights: dict[str, list[torch.Tensor]] = {}
        self.weight_sums: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict, share: float, log_weights: dict | None = None):
        for k, v in metrics.items():
            v = at_least_f32(v.detach())
            if k.endswith("_max"):
                self.values[k] = torch.maximum(self.values[k], v) if k in self.values else v
            else:
                self.values[k] = self.values[k] + v * share if k in self.values else v * share
        for prefix, lw in (log_weights or {}).items():
            self.log_weights.setdefault(prefix, []).append(lw.detach())

    def add_placeholder(self, metrics: dict, log_weights: dict | None = None):
        """A process with no data left (an uneven eval split) still holds every key, so that the reduction
        over processes lines up: means 0 (share 0), maxima -inf, weight prefixes with no weights."""
        for k, v in metrics.items():
            if k not in self.values:
                v = at_least_f32(v.detach())
                self.values[k] = torch.full_like(v, -math.inf) if k.endswith("_max") else torch.zeros_like(v)
        for prefix in log_weights or {}:
            self.log_weights.setdefault(prefix, [])

    def finalize(self) -> dict:
        self.weight_sums = {p: log_weight_sums(torch.cat(lws)) if lws else _NO_WEIGHTS.clone()
                            for p, lws in self.log_weights.items()}
        self.values.update(_pooled(self.values, self.weight_sums))
        return self.values

    def scale_weights(self, prefix: str, factor: float) -> None:
        """The `prefix` weights were all multiplied by `factor` (self-normalization over the step): rescale
        the metrics that carry their scale (mean, max); ESS and top share are scale-free."""
        for name in SCALED_METRICS:
            if f"{prefix}/{name}" in self.values:
                self.values[f"{prefix}/{name}"] = self.values[f"{prefix}/{name}"] * factor


TOKENS_WINDOW = "tokens_window"  # not a metric: this process's tokens since the last record, reduced with them
_NO_WEIGHTS = torch.tensor([-math.inf, -math.inf, -math.inf, 0.0], dtype=torch.float64)  # log_weight_sums of none


def at_least_f32(t: torch.Tensor) -> torch.Tensor:
    """float32, or float64 for a float64 run (numerical checks keep their precision in the metrics)."""
    return t if t.dtype == torch.float64 else t.float()


def _pooled(values: dict, weight_sums: dict) -> dict:
    """The batch-level weight metrics (`importance.pooled_weight_metrics`) the loss logged, recomputed
    from the whole batch's log-weight sums: no metric is named here."""
    out = {}
    for prefix, sums in weight_sums.items():
        for name, v in pooled_weight_metrics(sums).items():
            if f"{prefix}/{name}" in values:
                key = f"{prefix}/{name}"
                out[key] = v.to(values[key].device, values[key].dtype)
    return out


def global_weight_sums(weight_sums: dict, accelerator) -> dict:
    """Each prefix's `log_weight_sums` combined over processes (one gather; local when not distributed)."""
    if accelerator.num_processes == 1 or not weight_sums:
        return weight_sums
    keys = sorted(weight_sums)
    local = torch.stack([weight_sums[k].to(accelerator.device) for k in keys])  # (K, 4)
    every = accelerator.gather(local[None]).reshape(-1, len(keys), 4)           # (P, K, 4)
    return {k: combine_log_weight_sums(every[:, i]) for i, k in enumerate(keys)}


def to_floats(values: dict, accelerator, weight_sums: dict | None = None) -> dict:
    """One host sync for all metrics. Distributed: means averaged over processes, `*_max` maxed, and
    the pooled weight metrics (ESS, top share) recomputed from the log-weight sums of the global batch."""
    if not values:
        return {}
    keys = sorted(values)
    stacked = torch.stack([values[k].reshape(()).double() for k in keys])
    if accelerator.num_processes > 1:
        is_max = torch.tensor([k.endswith("_max") for k in keys], device=stacked.device)
        means = accelerator.reduce(stacked.clone(), reduction="mean")
        maxes = accelerator.gather(stacked[None]).max(0).values
        stacked = torch.where(is_max, maxes, means)
        for k, v in _pooled(values, global_weight_sums(weight_sums or {}, accelerator)).items():
            stacked[keys.index(k)] = v
    return dict(zip(keys, stacked.tolist()))


def self_normalizer(metrics_acc: StepMetrics, prefix: str, accelerator) -> float:
    """n / sum w over the whole step (every micro-batch and process) of the `prefix` weights: the factor
    that turns the gradient of sum_i w_i L_i / n into that of the self-normalized sum_i (w_i / mean w) L_i / n
    (w detached: the normalizer is a constant of the step)."""
    sums = global_weight_sums(metrics_acc.weight_sums, accelerator)[prefix]
    return math.exp(-float(log_mean_weight(sums)))


def scale_gradients(model, factor: float) -> None:
    """Multiply every accumulated gradient by `factor` (before clipping; linear, so under an fp16 grad
    scaler too)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)


def units_per_process(accelerator, local: int) -> float:
    """The step's global units (pairs, or SFT's response tokens) / processes: the loss denominator each
    process uses, so that DDP's mean over processes gives the global per-unit mean even when the processes'
    shares differ (one small all-reduce per step with several processes)."""
    if accelerator.num_processes == 1:
        return local
    total = accelerator.reduce(torch.tensor([float(local)], device=accelerator.device), reduction="sum")
    return float(total.item()) / accelerator.num_processes
