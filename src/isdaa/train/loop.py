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

import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from isdaa.config import to_yaml, total_steps
from isdaa.io import append_jsonl, atomic_write_json, atomic_write_text
from isdaa.train import accel_compat, console, launch, models
from isdaa.train import checkpoint as ckpt
from isdaa.train.callbacks import TrainContext
from isdaa.train.optim import make_optimizer, make_scheduler
from isdaa.train.run_dir import cut_logs, prepare_run_dir, read_summary
from isdaa.train.step_metrics import (
    TOKENS_WINDOW,
    StepMetrics,
    at_least_f32,
    scale_gradients,
    self_normalizer,
    to_floats,
    units_per_process,
)


class NonFiniteError(RuntimeError):
    """The loss or gradients stayed non-finite for `max_nonfinite_steps` steps in a row."""


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


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
    state = PartialState(cpu=launch.use_cpu())
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
        self.cfg, self.task, self.callbacks, self.batch_source = cfg, task, callbacks, batch_source
        self.out = Path(cfg.output_dir)
        self.accum = cfg.batch_size // (cfg.micro_batch_size * world)
        self.local_batch = cfg.batch_size // world
        self.accelerator = acc = self._accelerator()
        task.build(acc, online=batch_source is not None)
        if task.normalize_over_step and self.engine_steps_in_backward:
            raise ValueError("loss.is_self_normalize normalizes the weights over the whole optimizer step by "
                             "rescaling the accumulated gradients, which DeepSpeed's engine keeps to itself: "
                             "use DDP or FSDP (configs/accelerate/), or turn is_self_normalize off")
        self.n_train = len(task.train_examples)
        self.steps_per_epoch = self.n_train // cfg.batch_size
        if batch_source is None and self.steps_per_epoch == 0:
            raise ValueError(f"{self.n_train} training examples make no full batch of {cfg.batch_size}")
        self.total_steps = total_steps(self.n_train, cfg.batch_size, cfg.epochs, cfg.max_steps)
        self._prepare()
        self._restore(resume_from)
        self.save_at = ckpt.checkpoint_steps(cfg, self.total_steps)
        self.perm_epoch = self.perm = None
        self.last_record: dict = {}
        self.tokens_window = 0

    def _accelerator(self):
        """The Accelerator of this run (its trackers, FSDP on a CPU launch, DeepSpeed's batch), the notices
        printed at start, the seed set."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from isdaa.train import notices, tracking

        cfg = self.cfg
        accel_compat.check_fsdp_launch(launch.use_cpu())
        acc = Accelerator(cpu=launch.use_cpu(), gradient_accumulation_steps=self.accum,
                          mixed_precision=launch.resolve_mixed_precision(cfg.mixed_precision),
                          **tracking.accelerator_kwargs(cfg, self.out))  # log_with: trackers
        accel_compat.fsdp_on_cpu(acc)  # an FSDP launch on CPU runs FSDP2, not DDP
        launch.configure_deepspeed(acc, cfg)
        # DeepSpeed's engine runs the optimizer step inside the last micro-batch's backward (accelerate's wrapper):
        # the non-finite guard below can no longer skip a step there, only stop the run at the first one
        self.engine_steps_in_backward = getattr(acc.state, "deepspeed_plugin", None) is not None
        self.tracker = tracking.Trackers(acc, cfg, self.out)  # fails early when a tracker is not installed
        notices.at_start(cfg, acc)  # TRL default differences, bf16 measured slow on this CPU
        set_seed(cfg.seed)
        return acc

    def _prepare(self) -> None:
        """Optimizer and schedule; the model and optimizer through accelerate; the task's one-time passes with
        the initial policy (reference log-probs, log-prob checks); compilation after them."""
        cfg, acc, task = self.cfg, self.accelerator, self.task
        optimizer = make_optimizer(task.model, cfg.optim)
        self.scheduler = make_scheduler(optimizer, cfg.optim, self.total_steps)
        self.model, self.optimizer = acc.prepare(task.model, optimizer)
        task.model = self.model
        task.after_prepare(acc)  # e.g. reference log-probs, computed with the initial policy
        self.update_norm = None
        if cfg.log_update_norm:  # ||theta_after - theta_before|| of every step
            from isdaa.train.update_norm import UpdateNorm

            self.update_norm = UpdateNorm(self.model, acc)
        self.unwrapped = acc.unwrap_model(self.model)
        if cfg.compile:  # after the reference pass and log-prob check: they run once, uncompiled
            models.compile_blocks(self.unwrapped)

    def _restore(self, resume_from) -> None:
        """The counters of a fresh run, or a resumed run's from its checkpoint; the run folder's logs cut at
        the restart step (later records are replayed) and its config written."""
        acc = self.accelerator
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
            self.tracker.sent_through = cut_logs(self.out, self.step)  # steps the trackers had: sent once
            atomic_write_text(self.out / "config.yaml", to_yaml(self.cfg))
            (self.out / "summary.json").unlink(missing_ok=True)

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
        local_units = units_per_process(acc, sum(task.units(m) for m in micro))
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
            loss_total = loss_total + at_least_f32(loss_sum.detach()) / local_units
            metrics_acc.add(metrics, task.units(mb) / local_units, log_weights)
            self.tokens_window += batch["n_tokens"]
        metrics_acc.finalize()
        if task.normalize_over_step:  # self-normalized weights: divided by their mean over the whole step
            factor = self_normalizer(metrics_acc, task.normalize_over_step, acc)
            scale_gradients(model, factor)
            loss_total = loss_total * factor
            metrics_acc.scale_weights(task.normalize_over_step, factor)
        grad_norm = acc.clip_grad_norm_(model.parameters(), self.cfg.optim.max_grad_norm or float("inf"))
        finite = launch.all_finite(loss_total, grad_norm, acc)
        before = self.update_norm.snapshot() if self.update_norm else None
        if finite:
            self.optimizer.step()
            self.nonfinite_streak = 0
        else:  # skip: no NaN/inf ever reaches the weights or the optimizer state
            self.nonfinite_steps += 1
            self.nonfinite_streak += 1
            if self.engine_steps_in_backward:  # the step is already applied: nothing to skip, stop now
                self.nonfinite_streak = max(self.nonfinite_streak, self.cfg.max_nonfinite_steps)
        self.step_lr = self.scheduler.get_last_lr()[0]  # the rate this step applied (logged as `lr`, as TRL does)
        with warnings.catch_warnings():  # torch warns when the scheduler steps without an optimizer step
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics_acc.values["loss"] = loss_total
        metrics_acc.values["nonfinite_steps"] = torch.tensor(float(self.nonfinite_steps), device=acc.device)
        if grad_norm is not None:  # the PRE-clip norm
            metrics_acc.values["grad_norm"] = at_least_f32(torch.as_tensor(grad_norm, device=acc.device))
        if before is not None:
            metrics_acc.values["update_norm"] = self.update_norm.norm(before).to(acc.device)
        return metrics_acc

    def nonfinite_message(self) -> str:
        rows = [str(r) for r in self.batch_rows]
        files = {r.rsplit(": ", 1)[0] for r in rows if ": " in r}
        if len(files) == 1 and all(": " in r for r in rows):  # one file: name it once
            rows = [f"{files.pop()}: " + ", ".join(r.rsplit(": ", 1)[1] for r in rows)]
        batch = f"whose batch holds the dataset rows {'; '.join(rows)}" if rows else "(pairs from the batch_source)"
        if self.engine_steps_in_backward:
            return (f"non-finite loss or gradient at step {self.step}, {batch}. Under DeepSpeed the engine applies "
                    "the optimizer step inside backward, so the step could not be skipped: the run stops here (the "
                    "last checkpoint holds finite weights). Lower optim.lr / beta or check the data's log-prob "
                    "columns.")
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
        stop_reason = launch.agree_stop(ctx.stop_reason, acc)
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
                  "lr": self.step_lr, **values,
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
        from isdaa.train.trainer_state import run_state

        return run_state(self.out, step=self.step, epoch=self.epoch, cfg=self.cfg, total_steps=self.total_steps,
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
        bar = console.progress(cfg, self.total_steps, self.step, self.accelerator)
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
        self._write_record(self._floats(metrics_acc), console.NoBar())
        self._end(self._summary("failed", message), callbacks=False)
        raise NonFiniteError(message)

    def finish(self, stop_reason) -> dict:
        summary = self._summary("stopped" if stop_reason else "finished", stop_reason)
        if self.accelerator.is_main_process and self.cfg.progress and self.closing:  # transformers' closing dict
            console.write(console.NoBar(), str({k: console._fmt(v) for k, v in
                                                {**self.closing, "epoch": self.epoch}.items()}))
        return self._end(summary, callbacks=True)

    def _summary(self, status: str, reason) -> dict:
        """summary.json of this run, whatever its end: status (finished | stopped | failed), the reason,
        the counts and timings, the last logged metrics, the task's data counts."""
        elapsed = time.perf_counter() - self.t_start
        return {"status": status, "stop_reason": reason, "kind": self.cfg.kind, "step": self.step,
                "total_steps": self.total_steps, "examples_seen": self.examples_seen, "train_examples": self.n_train,
                "nonfinite_steps": self.nonfinite_steps,
                "resumed_from_step": self.start_step if self.resumed_from else None, "wall_s": elapsed,
                "steps_per_s": (self.step - self.start_step) / max(elapsed, 1e-9),
                "final_metrics": self.last_record, **self.task.summary_extra()}

    def _end(self, summary: dict, callbacks: bool) -> dict:
        """Write summary.json, let the callbacks see the end (not after a failure), close the trackers and
        accelerate's state."""
        acc = self.accelerator
        if acc.is_main_process:
            atomic_write_json(self.out / "summary.json", summary)
        if callbacks:
            end_ctx = self._context(summary=summary, _metrics=self.last_record)
            with models.eager():
                for cb in self.callbacks:
                    cb.on_train_end(end_ctx)
        self.tracker.close()
        acc.end_training()
        accel_compat.reset_state()
        return summary
