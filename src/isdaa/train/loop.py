"""The shared training loop for sft, rm and pref runs, on accelerate.

Why our own loop and not transformers.Trainer / TRL: we need exact control of the concatenated
chosen+rejected forward, checkpoint/resume equivalence (a resumed CPU run ends with the same weights
and metrics as an uninterrupted one), per-step IS diagnostics computed on the device and converted to
floats only at logging steps, and low per-step overhead on the lab's tiny models.

A `task` (sft.py, rm.py, pref.py) supplies the model, the pre-tokenized examples, `collate`,
`units` (the loss denominator of an example: pairs, or response tokens for SFT) and `loss`
(sum over the micro-batch of per-unit losses + metric tensors). The loop owns everything else:

- Data order: epoch e is a permutation from a generator seeded with (seed, e); optimizer step s reads
  global batch s of its epoch (the last partial batch is dropped), so resume skips consumed
  batches exactly. Each process takes a contiguous slice of the global batch, then micro-batches.
- Gradient accumulation divides by the GLOBAL batch: each micro-batch's loss is (sum of its
  per-unit losses) / (units of the process's whole batch), so batch 8 x accumulation 1 and batch
  1 x accumulation 8 give the same gradient (up to float error). accelerate divides by the
  accumulation steps, which we pre-multiply (this also holds under DeepSpeed, whose engine divides).
- Gradient clipping is applied; the PRE-clip norm is logged.
- Non-finite guard: a step whose loss or gradient norm is not finite is SKIPPED (gradients zeroed, no
  optimizer update; the batch is consumed and the lr schedule advances, so data order and schedule stay
  functions of the step number). Skips are counted (`nonfinite_steps` in metrics and summary.json);
  `max_nonfinite_steps` skips in a row stop the run with a `NonFiniteError` naming the step and the
  batch's dataset rows (summary.json status "failed"). Costs one host sync per step. Under fp16 the
  grad scaler owns gradient overflow (it skips such steps itself), so only the loss is checked. Under
  DeepSpeed the engine steps inside backward: the first non-finite step stops the run (nothing to skip).
- Several processes: the loss denominator is the GLOBAL batch's units shared out per process (one small
  all-reduce per step), so unequal shares (SFT's token counts) give the one-process gradient; evaluation
  covers every eval example once whatever the process count; tokens_per_s counts every process's tokens.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from isdaa.config import to_dict, to_yaml
from isdaa.io import append_jsonl, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_jsonl
from isdaa.train import accel_compat, console, models
from isdaa.train import checkpoint as ckpt
from isdaa.train.callbacks import TrainContext


class NonFiniteError(RuntimeError):
    """The loss or gradients stayed non-finite for `max_nonfinite_steps` steps in a row."""


RUNTIME_KEYS = {"progress", "report_to", "num_threads", "logging_steps", "run_name", "eval_batch_size",
                "push_to_hub", "hub_model_id", "hub_private", "eval", "resume_from_checkpoint", "save_total_limit",
                "output_dir"}  # a run folder moved elsewhere resumes


# ---------------------------------------------------------------- run directory


def prepare_run_dir(cfg, resume: bool, overwrite: bool) -> bool:
    """Refuse / clear / continue an output dir. Returns True when there is something to resume."""
    out = Path(cfg.output_dir)
    summary, config = out / "summary.json", out / "config.yaml"
    has_run = config.exists() or bool(ckpt.checkpoint_folders(out)) or ckpt.final_model_dir(out) is not None
    if overwrite:
        for path in [*ckpt.checkpoint_folders(out), out / ckpt.LEGACY_DIR, out / "eval"]:
            shutil.rmtree(path, ignore_errors=True)
        ckpt.remove_final(out)
        for name in ("summary.json", "config.yaml", "metrics.jsonl"):
            (out / name).unlink(missing_ok=True)
        return False
    if resume:
        if config.exists():
            from isdaa.config import load_run_config

            old, new = to_dict(load_run_config(config)), to_dict(cfg)
            diff = sorted(k for k in set(old) | set(new) if k not in RUNTIME_KEYS and old.get(k) != new.get(k))
            if diff:
                raise ValueError(f"--resume: the config differs from the run's config.yaml in {diff}")
        return has_run
    if summary.exists() and read_summary(out).get("status") == "finished":
        raise FileExistsError(f"{out} holds a finished run (summary.json); use --overwrite to replace it "
                              "or --resume to continue it")
    if has_run:
        raise FileExistsError(f"{out} holds an unfinished run; use --resume to continue it or --overwrite")
    return False


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def make_scheduler(optimizer, ocfg, total_steps: int):
    import transformers

    warmup = math.ceil(ocfg.warmup_ratio * total_steps) if ocfg.warmup_ratio > 0 else ocfg.warmup_steps
    if ocfg.scheduler == "cosine":
        return transformers.get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if ocfg.scheduler == "linear":
        return transformers.get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    return transformers.get_constant_schedule_with_warmup(optimizer, warmup)


def make_optimizer(model, ocfg):
    params = [p for p in model.parameters() if p.requires_grad]
    if ocfg.weight_decay > 0:  # no decay on biases and norms (1-D parameters)
        params = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": ocfg.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    if ocfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.sgd_momentum, weight_decay=ocfg.weight_decay)
    # fused: one kernel over all parameters instead of a dozen foreach ops; the same update up to round-off
    return torch.optim.AdamW(params, lr=ocfg.lr, betas=(ocfg.adam_beta1, ocfg.adam_beta2), eps=ocfg.adam_eps,
                             weight_decay=ocfg.weight_decay, fused=_fusable(model))


def _fusable(model) -> bool:
    """torch's fused AdamW takes floating-point parameters on CPU or CUDA (where `prepare` moves them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def resolve_mixed_precision(value: str) -> str:
    if value != "auto":
        return value
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


# ---------------------------------------------------------------- metrics of one step


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
            v = _at_least_f32(v.detach())
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
                v = _at_least_f32(v.detach())
                self.values[k] = torch.full_like(v, -math.inf) if k.endswith("_max") else torch.zeros_like(v)
        for prefix in log_weights or {}:
            self.log_weights.setdefault(prefix, [])

    def finalize(self) -> dict:
        from isdaa.importance import log_weight_sums

        self.weight_sums = {p: log_weight_sums(torch.cat(lws)) if lws else _NO_WEIGHTS.clone()
                            for p, lws in self.log_weights.items()}
        self.values.update(_pooled(self.values, self.weight_sums))
        return self.values

    def scale_weights(self, prefix: str, factor: float) -> None:
        """The `prefix` weights were all multiplied by `factor` (self-normalization over the step): rescale
        the metrics that carry their scale (mean, max); ESS and top share are scale-free."""
        from isdaa.importance import SCALED_METRICS

        for name in SCALED_METRICS:
            if f"{prefix}/{name}" in self.values:
                self.values[f"{prefix}/{name}"] = self.values[f"{prefix}/{name}"] * factor


TOKENS_WINDOW = "tokens_window"  # not a metric: this process's tokens since the last record, reduced with them
_NO_WEIGHTS = torch.tensor([-math.inf, -math.inf, -math.inf, 0.0], dtype=torch.float64)  # log_weight_sums of none


def _at_least_f32(t: torch.Tensor) -> torch.Tensor:
    """float32, or float64 for a float64 run (numerical checks keep their precision in the metrics)."""
    return t if t.dtype == torch.float64 else t.float()


def _pooled(values: dict, weight_sums: dict) -> dict:
    """The batch-level weight metrics (`importance.pooled_weight_metrics`) the loss logged, recomputed
    from the whole batch's log-weight sums: no metric is named here."""
    from isdaa.importance import pooled_weight_metrics

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
    from isdaa.importance import combine_log_weight_sums

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
    from isdaa.importance import log_mean_weight

    sums = global_weight_sums(metrics_acc.weight_sums, accelerator)[prefix]
    return math.exp(-float(log_mean_weight(sums)))


def scale_gradients(model, factor: float) -> None:
    """Multiply every accumulated gradient by `factor` (before clipping; linear, so under an fp16 grad
    scaler too)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if grads:
        torch._foreach_mul_(grads, factor)


# ---------------------------------------------------------------- the loop


def run(cfg, task, callbacks=(), batch_source=None, resume: bool = False, overwrite: bool = False) -> dict:
    """Train `task` under `cfg`; returns the summary dict (also written to summary.json). `resume` (or
    `cfg.resume_from_checkpoint: true`) continues from the latest resumable checkpoint in output_dir;
    `cfg.resume_from_checkpoint: PATH` from that checkpoint folder."""
    from accelerate import PartialState

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if not cfg.progress:  # the lab's workers: no bars from transformers either
        import transformers

        transformers.utils.logging.disable_progress_bar()
    accel_compat.reset_state()
    state = PartialState(cpu=_use_cpu())
    if cfg.batch_size % (cfg.micro_batch_size * state.num_processes):
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch_size "
                         f"{cfg.micro_batch_size} x {state.num_processes} processes")
    resume_from = cfg.resume_from_checkpoint or (True if resume else None)
    if resume_from is not None and overwrite:
        raise ValueError("resume_from_checkpoint / --resume and --overwrite exclude each other")
    explicit = resume_from not in (None, True)  # a checkpoint folder: resumed even into a fresh output_dir
    has_run = prepare_run_dir(cfg, resume_from is not None, overwrite) if state.is_main_process else True
    state.wait_for_everyone()
    out = Path(cfg.output_dir)
    if resume_from is True and has_run and (out / "summary.json").exists() \
            and read_summary(out).get("status") == "finished":
        return read_summary(out)  # nothing left to do
    resume_from = resume_from if (has_run or explicit) else None
    return _Run(cfg, task, list(callbacks), batch_source, resume_from, state.num_processes).train()


class _Run:
    """One training run: setup in __init__, then `train()` = steps, logging, checkpoints, summary."""

    def __init__(self, cfg, task, callbacks, batch_source, resume_from, world: int):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg, self.task, self.callbacks, self.batch_source = cfg, task, callbacks, batch_source
        self.out = Path(cfg.output_dir)
        self.accum = cfg.batch_size // (cfg.micro_batch_size * world)
        self.local_batch = cfg.batch_size // world
        from isdaa.train import tracking

        accel_compat.check_fsdp_launch(_use_cpu())
        self.accelerator = acc = Accelerator(cpu=_use_cpu(), gradient_accumulation_steps=self.accum,
                                             mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
                                             **tracking.accelerator_kwargs(cfg, self.out))  # log_with: trackers
        accel_compat.fsdp_on_cpu(acc)  # an FSDP launch on CPU runs FSDP2, not DDP
        _configure_deepspeed(acc, cfg)
        # DeepSpeed's engine runs the optimizer step inside the last micro-batch's backward (accelerate's wrapper):
        # the non-finite guard below can no longer skip a step there, only stop the run at the first one
        self.engine_steps_in_backward = getattr(acc.state, "deepspeed_plugin", None) is not None
        self.tracker = _trackers(cfg, self.out, acc)  # fails early when a tracker is not installed
        from isdaa.train import notices

        notices.at_start(cfg, acc)  # TRL default differences, bf16 measured slow on this CPU
        set_seed(cfg.seed)

        task.build(acc, online=batch_source is not None)
        if task.normalize_over_step and getattr(acc.state, "deepspeed_plugin", None) is not None:
            raise ValueError("loss.is_self_normalize normalizes the weights over the whole optimizer step by "
                             "rescaling the accumulated gradients, which DeepSpeed's engine keeps to itself: "
                             "use DDP or FSDP (configs/accelerate/), or turn is_self_normalize off")
        self.n_train = len(task.train_examples)
        self.steps_per_epoch = self.n_train // cfg.batch_size
        if batch_source is None and self.steps_per_epoch == 0:
            raise ValueError(f"{self.n_train} training examples make no full batch of {cfg.batch_size}")
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))

        optimizer = make_optimizer(task.model, cfg.optim)
        self.scheduler = make_scheduler(optimizer, cfg.optim, self.total_steps)
        self.model, self.optimizer = acc.prepare(task.model, optimizer)
        task.model = self.model
        task.after_prepare(acc)  # e.g. reference log-probs, computed with the initial policy
        self.update_norm = _update_norm(cfg, self.model, acc)  # log_update_norm: ||theta_after - theta_before||
        self.unwrapped = acc.unwrap_model(self.model)
        if cfg.compile:  # after the reference pass and log-prob check: they run once, uncompiled
            models.compile_blocks(self.unwrapped)

        self.step, self.examples_seen, self.epoch = 0, 0, 0.0
        self.nonfinite_steps = self.nonfinite_streak = 0
        self.batch_rows: list = []
        # this process's token count and summed step losses since the start or the resume; *_base: the
        # whole run's before the resume (trainer_state.json's num_input_tokens_seen and train_loss)
        self.tokens_seen, self.loss_steps, self.tokens_base, self.loss_base = 0, 0, 0, 0.0
        self.loss_sum = torch.zeros((), device=acc.device)
        self.resumed_from = ckpt.resume_point(self.out, resume_from) if resume_from is not None else None
        if self.resumed_from is not None:
            st = ckpt.load_resume_state(self.resumed_from, self.model, self.optimizer, self.scheduler, acc)
            self.step, self.examples_seen, self.epoch = st["step"], st["examples_seen"], st["epoch"]
            self.nonfinite_steps, self.nonfinite_streak = st.get("nonfinite_steps", 0), st.get("nonfinite_streak", 0)
            self.tokens_base, self.loss_base = st.get("tokens_seen", 0), st.get("loss_sum", 0.0)
            self.loss_steps = st.get("loss_steps", 0)
        elif resume_from is not None and acc.is_main_process:
            print(f"--resume: no resumable checkpoint in {self.out}; starting from step 0")
        self.start_step = self.step
        if acc.is_main_process:
            ckpt.remove_stale_temporaries(self.out)
            metrics_file = self.out / "metrics.jsonl"
            if metrics_file.exists():  # records past the restart point are replayed
                rows = read_jsonl(metrics_file, tolerate_partial_tail=True)
                atomic_write_jsonl(metrics_file, [r for r in rows if r.get("step", 0) <= self.step])
                self.tracker.sent_through = max([r.get("step", 0) for r in rows], default=0)  # sent once
            generations = self.out / "eval_generations.jsonl"  # the live eval's samples: replayed too
            if generations.exists():
                rows = read_jsonl(generations, tolerate_partial_tail=True)
                atomic_write_jsonl(generations, [r for r in rows if r.get("step", 0) <= self.step])
            atomic_write_text(self.out / "config.yaml", to_yaml(cfg))
            (self.out / "summary.json").unlink(missing_ok=True)
        self.save_at = ckpt.checkpoint_steps(cfg, self.total_steps)
        self.perm_epoch = self.perm = None
        self.last_record: dict = {}
        self.tokens_window = 0

    # -- data
    def local_examples(self) -> list:
        """This process's examples for the current step (dataset order, or the batch_source)."""
        cfg, acc = self.cfg, self.accelerator
        if self.batch_source is not None:
            self.batch_rows = []  # sampled pairs: no dataset rows to name
            with models.eager():  # sampling: no compilations for decode shapes
                rows = self.batch_source(self.step, self.unwrapped, self.task.tokenizer)
            local = self.task.examples_from_source(rows)
            self.examples_seen += self.task.units(local) * acc.num_processes  # pairs (pref only)
            self.epoch = (self.step + 1) / self.steps_per_epoch if self.steps_per_epoch else 0.0
            return local
        epoch, b = divmod(self.step, self.steps_per_epoch)
        if self.perm_epoch != epoch:
            self.perm_epoch, self.perm = epoch, epoch_permutation(cfg.seed, epoch, self.n_train)
        idx = self.perm[b * cfg.batch_size: (b + 1) * cfg.batch_size]
        idx = idx[acc.process_index * self.local_batch: (acc.process_index + 1) * self.local_batch]
        self.examples_seen += cfg.batch_size
        self.epoch = epoch + (b + 1) / self.steps_per_epoch
        local = [self.task.train_examples[i] for i in idx.tolist()]
        self.batch_rows = [e.get("row", "?") for e in local]
        return local

    # -- one optimizer step
    def train_step(self, local: list) -> StepMetrics:
        """Forward/backward over micro-batches (one sync per step), clip, optimizer and scheduler step.
        Returns the step's metric tensors (no host sync)."""
        task, acc, model = self.task, self.accelerator, self.model
        model.train()
        task.at_initial_policy = self.step == 0
        micro = [local[i: i + self.cfg.micro_batch_size] for i in range(0, len(local), self.cfg.micro_batch_size)]
        # the loss denominator: units (pairs, or response tokens for SFT) of the GLOBAL batch, shared out per
        # process (DDP averages the processes' gradients): each process backpropagates sum of its unit losses
        # x world / global units, so unequal token counts across processes still give the global per-unit mean
        local_units = self._units_per_process(sum(task.units(m) for m in micro))
        metrics_acc = StepMetrics()
        loss_total = torch.zeros((), device=acc.device)
        for j, mb in enumerate(micro):
            batch = task.to_device(task.collate(mb), acc.device)
            last = j == len(micro) - 1
            accel_compat.set_sync_gradients(acc, last)  # DDP gradient sync, DeepSpeed step boundary
            with (nullcontext() if last else acc.no_sync(model)), acc.autocast():
                loss_sum, metrics, log_weights = task.loss(model, batch)
                # accelerate divides by `accum`: the net scale is 1 / (units of the whole local batch)
                acc.backward(loss_sum * (self.accum / local_units))
            loss_total = loss_total + _at_least_f32(loss_sum.detach()) / local_units
            metrics_acc.add(metrics, task.units(mb) / local_units, log_weights)
            self.tokens_window += batch["n_tokens"]
        metrics_acc.finalize()
        if task.normalize_over_step:  # self-normalized weights: divided by their mean over the whole step
            factor = self_normalizer(metrics_acc, task.normalize_over_step, acc)
            scale_gradients(model, factor)
            loss_total = loss_total * factor
            metrics_acc.scale_weights(task.normalize_over_step, factor)
        grad_norm = acc.clip_grad_norm_(model.parameters(), self.cfg.optim.max_grad_norm or float("inf"))
        finite = self._all_finite(loss_total, grad_norm)
        before = self.update_norm.snapshot() if self.update_norm else None
        if finite:
            self.optimizer.step()
            self.nonfinite_streak = 0
        else:  # skip: no NaN/inf ever reaches the weights or the optimizer state
            self.nonfinite_steps += 1
            self.nonfinite_streak += 1
            if self.engine_steps_in_backward:  # the step is already applied: nothing to skip, stop now
                self.nonfinite_streak = max(self.nonfinite_streak, self.cfg.max_nonfinite_steps)
        with warnings.catch_warnings():  # torch warns when the scheduler steps without an optimizer step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics_acc.values["loss"] = loss_total
        metrics_acc.values["nonfinite_steps"] = torch.tensor(float(self.nonfinite_steps), device=acc.device)
        if grad_norm is not None:  # the PRE-clip norm
            metrics_acc.values["grad_norm"] = _at_least_f32(torch.as_tensor(grad_norm, device=acc.device))
        if before is not None:
            metrics_acc.values["update_norm"] = self.update_norm.norm(before).to(acc.device)
        return metrics_acc

    def _units_per_process(self, local: int) -> float:
        """Global units / processes (one small all-reduce per step with several processes)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return local
        total = acc.reduce(torch.tensor([float(local)], device=acc.device), reduction="sum")
        return float(total.item()) / acc.num_processes

    def _all_finite(self, loss, grad_norm) -> bool:
        """Whether the step's loss and gradient norm are finite on every process (one host sync)."""
        acc = self.accelerator
        bad = ~torch.isfinite(loss)
        if grad_norm is not None and getattr(acc, "scaler", None) is None:  # fp16: the scaler's business
            bad = bad | ~torch.isfinite(torch.as_tensor(grad_norm, device=acc.device).float())
        bad = bad.float().reshape(1)
        if acc.num_processes > 1:
            bad = acc.reduce(bad, reduction="sum")
        return bool(bad.item() == 0)

    def nonfinite_message(self) -> str:
        rows = [str(r) for r in self.batch_rows]
        files = {r.rsplit(": ", 1)[0] for r in rows if ": " in r}
        if len(files) == 1 and all(": " in r for r in rows):  # one file: name it once
            rows = [f"{files.pop()}: " + ", ".join(r.rsplit(": ", 1)[1] for r in rows)]
        batch = f"whose batch holds the dataset rows {'; '.join(rows)}" if rows else "(pairs from the batch_source)"
        if self.engine_steps_in_backward:
            return (f"non-finite loss or gradient at step {self.step}, {batch}. Under DeepSpeed the engine applies "
                    "the optimizer step inside backward, so the step could not be skipped: the run stops here (the "
                    "last checkpoint holds finite weights). Lower optim.lr / beta or check the data's log-prob columns.")
        return (f"non-finite loss or gradient for {self.nonfinite_streak} steps in a row "
                f"(max_nonfinite_steps={self.cfg.max_nonfinite_steps}); stopped at step {self.step}, {batch}. "
                "Lower optim.lr / beta, check the data's log-prob columns, or raise max_nonfinite_steps.")

    # -- after a step: metrics (floats only here), evaluation, callbacks, checkpoints
    def after_step(self, metrics_acc: StepMetrics, bar) -> str | None:
        cfg, acc, step = self.cfg, self.accelerator, self.step
        if self.nonfinite_streak == 0:  # an applied step: its loss counts toward train_loss (no host sync)
            self.loss_sum, self.loss_steps = self.loss_sum + metrics_acc.values["loss"], self.loss_steps + 1

        def floats():
            return self._floats(metrics_acc)

        is_log_step = step % cfg.logging_steps == 0 or step == self.total_steps
        ctx = self._context(_metrics_fn=floats, _metrics=floats() if is_log_step else None)
        if self.task.has_eval and (step == self.total_steps or (cfg.eval_steps and step % cfg.eval_steps == 0)):
            ctx.logged.update(self.task.evaluate(self.model, acc))
            self.model.train()
        with models.eager():  # callbacks (live eval) sample and score with the policy
            for cb in self.callbacks:
                cb.on_step_end(ctx)
        if is_log_step or ctx.logged:
            self._write_record({**ctx.metrics, **ctx.logged}, bar)
        bar.update(1)
        stop_reason = _agree_stop(ctx.stop_reason, acc)
        if stop_reason is None and step in self.save_at and step < self.total_steps:
            self.save(resumable=cfg.save_resume_state)
        return stop_reason

    def _floats(self, metrics_acc: StepMetrics) -> dict:
        """The step's metrics as floats (collective); this process's token count rides along to be summed
        over processes (tokens_per_s, `_write_record`)."""
        window = torch.tensor(float(self.tokens_window), device=self.accelerator.device)
        return to_floats({**metrics_acc.values, TOKENS_WINDOW: window}, self.accelerator, metrics_acc.weight_sums)

    def _write_record(self, values: dict, bar) -> None:
        now = time.perf_counter()
        values = dict(values)
        # every process's tokens since the last record (the mean over processes of each one's count, x processes)
        tokens = values.pop(TOKENS_WINDOW, self.tokens_window) * self.accelerator.num_processes
        record = {"step": self.step, "examples": self.examples_seen, "epoch": round(self.epoch, 6),
                  "lr": self.scheduler.get_last_lr()[0], **values,
                  "tokens_per_s": tokens / max(now - self.t_window, 1e-9),
                  "elapsed_s": now - self.t_start}
        self.tokens_seen += self.tokens_window
        self.t_window, self.tokens_window = now, 0
        self.last_record = record
        if self.accelerator.is_main_process:
            append_jsonl(self.out / "metrics.jsonl", record)
            self.tracker.log(record, self.step)
            if self.cfg.progress:  # a dict per logging step above the bar, as TRL prints it
                for line in console.log_lines(record, self.cfg):
                    console.write(bar, line)
            bar.set_postfix(console.postfix(record, self.cfg), refresh=False)

    def _context(self, **kw) -> TrainContext:
        return TrainContext(step=self.step, examples_seen=self.examples_seen, total_steps=self.total_steps,
                            epoch=self.epoch, model=self.unwrapped, tokenizer=self.task.tokenizer, cfg=self.cfg,
                            output_dir=str(self.out), is_main_process=self.accelerator.is_main_process,
                            accelerator=self.accelerator, **kw)

    def run_totals(self) -> tuple[int, float]:
        """(tokens, summed step losses) of the whole run so far, over processes (collective: every
        process calls it, at saves; a loss is the mean over processes of their local losses)."""
        acc = self.accelerator
        local = torch.stack([torch.tensor(float(self.tokens_seen + self.tokens_window), device=acc.device),
                             self.loss_sum.float()])
        if acc.num_processes > 1:
            local = acc.reduce(local, reduction="sum") * torch.tensor([1.0, 1.0 / acc.num_processes],
                                                                      device=acc.device)
        tokens, loss = local.tolist()
        return self.tokens_base + int(tokens), self.loss_base + loss

    def trainer_state(self) -> dict:
        """isdaa's resume state (isdaa_state.json; collective, as run_totals)."""
        tokens, loss_sum = self.run_totals()
        return {"step": self.step, "examples_seen": self.examples_seen, "epoch": self.epoch,
                "total_steps": self.total_steps, "nonfinite_steps": self.nonfinite_steps,
                "nonfinite_streak": self.nonfinite_streak, "tokens_seen": tokens, "loss_sum": loss_sum,
                "loss_steps": self.loss_steps}

    def hf_state(self, state: dict, final: dict | None = None) -> dict:
        """transformers' TrainerState of the run at this step (log_history from metrics.jsonl)."""
        from isdaa.train.trainer_state import hf_trainer_state

        metrics_file = self.out / "metrics.jsonl"
        records = read_jsonl(metrics_file, tolerate_partial_tail=True) if metrics_file.exists() else []
        return hf_trainer_state(records, step=self.step, epoch=self.epoch, cfg=self.cfg, total_steps=self.total_steps,
                                tokens_seen=state["tokens_seen"], final=final)

    def save(self, resumable: bool) -> None:
        acc, state = self.accelerator, self.trainer_state()
        path = ckpt.save_checkpoint(ckpt.step_dir(self.out, self.step), self.model, self.task.tokenizer, acc,
                                    state, self.optimizer if resumable else None, self.scheduler,
                                    hf_state=self.hf_state(state) if acc.is_main_process else {})
        if resumable:
            ckpt.prune_resume_state(self.out, self.cfg.resume_state_keep, acc)
        ckpt.rotate(self.out, self.cfg.save_total_limit, acc, keep=[path])
        acc.wait_for_everyone()

    def save_final(self) -> None:
        """The final model at the output root (TRL's layout), with trainer_state.json closed by
        transformers' closing entry (train_runtime, train_loss, ...)."""
        from isdaa.train.trainer_state import closing_entry

        acc, state = self.accelerator, self.trainer_state()
        done = self.step - self.start_step
        self.closing = closing_entry(runtime_s=time.perf_counter() - self.t_start, steps=done,
                                     examples=done * self.cfg.batch_size, loss_sum=state["loss_sum"],
                                     loss_steps=state["loss_steps"])
        ckpt.save_final(self.out, self.model, self.task.tokenizer, acc, state,
                        self.hf_state(state, self.closing) if acc.is_main_process else {})

    # -- the run
    def train(self) -> dict:
        cfg = self.cfg
        if self.step == 0 and 0 in self.save_at:
            self.save(resumable=False)
        begin = self._context()
        with models.eager():  # e.g. the live eval loads its prompts, reward and reference
            for cb in self.callbacks:
                cb.on_train_begin(begin)
        bar = _progress(cfg, self.total_steps, self.step, self.accelerator)
        self.t_start = self.t_window = time.perf_counter()
        stop_reason = None
        while self.step < self.total_steps and stop_reason is None:
            metrics_acc = self.train_step(self.local_examples())
            if self.nonfinite_streak >= cfg.max_nonfinite_steps:
                bar.close()
                self.fail(metrics_acc, self.nonfinite_message())
            stop_reason = self.after_step(metrics_acc, bar)
        bar.close()
        self.closing = None
        if self.step > self.start_step or not ckpt.final_complete(self.out):
            if stop_reason is not None or self.step in self.save_at:
                self.save(resumable=stop_reason is not None or cfg.save_resume_state)
            self.save_final()
        return self.finish(stop_reason)

    def fail(self, metrics_acc: StepMetrics, message: str):
        """Record the failing step's metrics and a "failed" summary.json, then raise NonFiniteError
        (the last checkpoint stays resumable; nothing non-finite was saved)."""
        acc = self.accelerator
        self._write_record(self._floats(metrics_acc), _NoBar())
        summary = {"status": "failed", "stop_reason": message, "kind": self.cfg.kind, "step": self.step,
                   "total_steps": self.total_steps, "examples_seen": self.examples_seen,
                   "nonfinite_steps": self.nonfinite_steps, "final_metrics": self.last_record,
                   **self.task.summary_extra()}
        if acc.is_main_process:
            atomic_write_json(self.out / "summary.json", summary)
        self.tracker.close()
        acc.end_training()
        accel_compat.reset_state()
        raise NonFiniteError(message)

    def finish(self, stop_reason) -> dict:
        acc, elapsed = self.accelerator, time.perf_counter() - self.t_start
        summary = {"status": "stopped" if stop_reason else "finished", "stop_reason": stop_reason,
                   "kind": self.cfg.kind, "step": self.step, "total_steps": self.total_steps,
                   "examples_seen": self.examples_seen, "train_examples": self.n_train,
                   "nonfinite_steps": self.nonfinite_steps,
                   "resumed_from_step": self.start_step if self.resumed_from else None, "wall_s": elapsed,
                   "steps_per_s": (self.step - self.start_step) / max(elapsed, 1e-9),
                   "final_metrics": self.last_record, **self.task.summary_extra()}
        if acc.is_main_process:
            atomic_write_json(self.out / "summary.json", summary)
            if self.cfg.progress and self.closing:  # transformers' closing dict
                console.write(_NoBar(), str({k: console._fmt(v) for k, v in
                                             {**self.closing, "epoch": self.epoch}.items()}))
        end_ctx = self._context(summary=summary, _metrics=self.last_record)
        with models.eager():
            for cb in self.callbacks:
                cb.on_train_end(end_ctx)
        self.tracker.close()
        acc.end_training()
        accel_compat.reset_state()
        return summary


def _use_cpu() -> bool:
    """CPU-only, several processes (`accelerate launch --cpu`, torchrun on CPU): accelerate's MULTI_CPU
    (gloo) needs cpu=True; otherwise leave the device choice to accelerate."""
    import os

    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return flag or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)


def _configure_deepspeed(accelerator, cfg) -> None:
    """We prepare no dataloader, so DeepSpeed learns the micro batch and clipping from the run config."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    ds["train_batch_size"] = cfg.batch_size
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = cfg.optim.max_grad_norm or 0.0


def read_summary(out) -> dict:
    import json

    return json.loads((Path(out) / "summary.json").read_text(encoding="utf-8"))


def _agree_stop(reason, accelerator):
    """All processes stop together when any one was asked to (one small all-reduce per step, only
    when distributed)."""
    if accelerator.num_processes == 1:
        return reason
    flag = torch.tensor([1.0 if reason else 0.0], device=accelerator.device)
    if accelerator.reduce(flag, reduction="sum").item() > 0:
        return reason or "stop requested on another process"
    return None


class _NoBar:
    disable = True

    def set_postfix(self, *args, **kwargs):
        pass


def _progress(cfg, total, initial, accelerator):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not (cfg.progress and accelerator.is_main_process),
                desc=f"{cfg.kind}", dynamic_ncols=True)


def _update_norm(cfg, model, accelerator):
    if not cfg.log_update_norm:
        return None
    from isdaa.train.update_norm import UpdateNorm

    return UpdateNorm(model, accelerator)


def _trackers(cfg, out, accelerator):
    from isdaa.train.tracking import Trackers

    return Trackers(accelerator, cfg, out)
