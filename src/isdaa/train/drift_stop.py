"""`stop_on_drift`: the golden-free over-optimization alarm as a training callback.

Every `every` optimizer steps (default: the logging steps) the callback reads the step's signal from
`ctx.metrics` (the batch's `drift/*` or `is/*` metric, already reduced over processes by the loop),
broadcasts process 0's value so that every process feeds the identical number to the same
`isdaa.drift.DriftRule`: all processes take the same decision at the same step (keep-best's save is
collective). When the rule fires:

- `action: stop`: the run ends cleanly (final checkpoint, summary.json status "stopped", the reason);
- `action: keep-best`: the policy of that step is saved once to `OUTPUT_DIR/best_by_drift/` (model,
  tokenizer, trainer_state.json with the alarm) and training goes on.

summary.json gets a `stop_on_drift` block (settings, whether and when it fired, the smoothed value).
Resume: the rule is replayed over the checks of the run's own metrics.jsonl up to the resume step (the loop
has cut it there), so the smoothing window and patience continue as if the run had not stopped and a
resumed run fires at the step an uninterrupted one does; an alarm found in the replay counts as fired
(it is not raised again), and a `best_by_drift/` already written is kept.
"""

from __future__ import annotations

from pathlib import Path

import torch

from isdaa.drift import SIGNALS, DriftRule
from isdaa.io import atomic_write_json
from isdaa.train.callbacks import TrainerCallback

BEST_DIR = "best_by_drift"


class DriftStop(TrainerCallback):
    def __init__(self, cfg, logging_steps: int):
        self.cfg = cfg
        self.every = cfg.every or logging_steps
        signal = SIGNALS[cfg.signal]
        self.rule = DriftRule(cfg.threshold, signal.direction, cfg.smoothing, cfg.patience)
        self.alarm: dict | None = None
        self.checks = 0
        self.started = False

    def on_step_end(self, ctx):
        if not self.started:
            self.started = True
            self._recover(ctx)
        if ctx.step % self.every or self.rule.fired:
            return
        metrics = ctx.metrics  # every process reads it at the same steps (a collective reduce)
        if self.cfg.signal not in metrics:
            raise RuntimeError(f"stop_on_drift: the trainer logs no {self.cfg.signal!r} "
                               f"(logged: {', '.join(sorted(metrics))})")
        value = _from_main(ctx.accelerator, metrics[self.cfg.signal])
        self.checks += 1
        fired = self.rule.update(value)
        ctx.log({"drift_stop/smoothed": self.rule.smoothed})
        if not fired:
            return
        op = "<" if self.rule.direction == "below" else ">"
        reason = (f"stop_on_drift: {self.cfg.signal} (mean of the last {len(self.rule.window)} checks) = "
                  f"{self.rule.smoothed:.4g} {op} {self.cfg.threshold:g} for {self.cfg.patience} check(s) "
                  f"in a row, at step {ctx.step}")
        self.alarm = {"step": ctx.step, "examples_seen": ctx.examples_seen, "smoothed": self.rule.smoothed,
                      "reason": reason, "best_by_drift": None}
        if self.cfg.action == "stop":
            ctx.request_stop(reason)
        else:
            self.alarm["best_by_drift"] = str(self._save(ctx))

    def _save(self, ctx) -> Path:
        from isdaa.train import checkpoint as ckpt

        acc = ctx.accelerator
        prepared = getattr(acc, "_models", None)  # the wrapped model (FSDP / DeepSpeed gather from it)
        model = prepared[0] if prepared else ctx.model
        state = {"step": ctx.step, "examples_seen": ctx.examples_seen, "epoch": ctx.epoch,
                 "total_steps": ctx.total_steps, "stop_on_drift": self.alarm}
        return ckpt.save_checkpoint(Path(ctx.output_dir) / BEST_DIR, model, ctx.tokenizer, acc, state)

    def _recover(self, ctx) -> None:
        """Replay the checks of steps before this one (a resumed run) from metrics.jsonl (process 0's file,
        broadcast), then keep a best_by_drift/ already written."""
        self._replay(ctx)
        marker = Path(ctx.output_dir) / BEST_DIR / "trainer_state.json"
        if _from_main(ctx.accelerator, float(marker.exists())) > 0:
            import json

            self.alarm = json.loads(marker.read_text(encoding="utf-8")).get("stop_on_drift") \
                if marker.exists() else {"step": None, "reason": "fired before the resume"}
            self.rule.fired = True

    def _replay(self, ctx) -> None:
        from isdaa.drift import series
        from isdaa.io import read_jsonl

        steps, values = [], []
        path = Path(ctx.output_dir) / "metrics.jsonl"
        if ctx.is_main_process and path.exists():
            records = [r for r in read_jsonl(path, tolerate_partial_tail=True) if r.get("step", 0) < ctx.step]
            steps, values = series(records, self.cfg.signal, str(path))
        checks = [(s, v) for s, v in zip(steps, values) if s % self.every == 0]
        checks = _list_from_main(ctx.accelerator, checks)
        for step, value in checks:
            self.checks += 1
            if self.rule.update(value):
                op = "<" if self.rule.direction == "below" else ">"
                reason = (f"stop_on_drift: {self.cfg.signal} = {self.rule.smoothed:.4g} {op} {self.cfg.threshold:g}"
                          f" at step {step} (before the resume)")
                self.alarm = {"step": step, "smoothed": self.rule.smoothed, "reason": reason, "best_by_drift": None}

    def on_train_end(self, ctx):
        if ctx.summary is None:
            return
        ctx.summary["stop_on_drift"] = {
            "signal": self.cfg.signal, "threshold": self.cfg.threshold, "smoothing": self.cfg.smoothing,
            "patience": self.cfg.patience, "action": self.cfg.action, "every": self.every,
            "checks": self.checks, "fired": self.alarm is not None, **(self.alarm or {})}
        if ctx.is_main_process:
            atomic_write_json(Path(ctx.output_dir) / "summary.json", ctx.summary)


def _from_main(accelerator, value: float) -> float:
    """`value` as process 0 has it, on every process (one tiny broadcast when distributed)."""
    if accelerator is None or accelerator.num_processes == 1:
        return float(value)
    from accelerate.utils import broadcast

    t = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(broadcast(t, from_process=0).item())


def _list_from_main(accelerator, items: list) -> list:
    """Process 0's list on every process (one object broadcast when distributed)."""
    if accelerator is None or accelerator.num_processes == 1:
        return items
    from accelerate.utils import broadcast_object_list

    box = [items]
    broadcast_object_list(box, from_process=0)
    return box[0]


def drift_callbacks(cfg) -> list:
    """[DriftStop] when the config has a `stop_on_drift` block, else []. A signal that is constant for
    the method (is/ess, is/clip_frac without importance weights) is an error: the rule could never fire."""
    block = getattr(cfg, "stop_on_drift", None)
    if block is None:
        return []
    from isdaa.losses import METHODS

    if SIGNALS[block.signal].is_only and not METHODS[cfg.method].importance_weighted:
        raise ValueError(f"stop_on_drift.signal {block.signal} is constant for method {cfg.method!r} (no "
                         "importance weights: w = 1); use drift/log_ratio_mean or drift/ratio_mean")
    return [DriftStop(block, cfg.logging_steps)]
