"""What the loop needs from a task (sft, rm, pref); shared data loading and evaluation."""

from __future__ import annotations

import torch

from isdaa.data import load_rows
from isdaa.train.step_metrics import StepMetrics, self_normalizer, to_floats


class Task:
    """Subclasses set `tokenizer`, `model`, `train_examples`, `eval_examples` in `build`, and define
    `collate(examples) -> batch`, `units(examples) -> int` (loss denominator) and
    `loss(model, batch) -> (sum of per-unit losses, {name: 0-dim tensor mean}, {prefix: (B,) log-weights} or
    None)`. `normalize_over_step`: the prefix of log-weights whose weights the loss applied UNnormalized and
    the loop divides by their mean over the whole optimizer step (every micro-batch and process; the
    gradient is rescaled after accumulation), or None."""

    kind = "task"
    eval_examples: list | None = None
    normalize_over_step: str | None = None
    at_initial_policy = False  # set by the loop: this step's forward runs the initial policy (step 1 of a fresh run)

    def __init__(self, cfg):
        self.cfg = cfg
        self.truncated = 0
        self.data_stats: dict = {}  # data/* counts of the training set (dropped pairs, long prompts)

    # -- data
    def load(self, split: str) -> list[dict]:
        d = self.cfg.data
        if split == "train":  # streamed: only the rows the run can use are read (sft / rm; pref streams per step)
            limit = d.max_train_examples or (self.cfg.max_steps * self.cfg.batch_size
                                             if d.streaming and self.cfg.max_steps else None)
            return load_rows(d.train, d.train_split, d.subset, limit, d.streaming, d.num_proc)
        if d.eval == d.train and d.eval_split == d.train_split:  # asked for (config validation refuses it unasked)
            import warnings

            warnings.warn(f"data.eval is the training data ({d.train}, split {d.train_split}): eval/* metrics are "
                          "measured on the pairs the model trains on", stacklevel=2)
        return load_rows(d.eval, d.eval_split, d.subset, d.max_eval_examples, d.streaming, d.num_proc)

    def build(self, accelerator, online: bool = False) -> None:
        raise NotImplementedError

    def after_prepare(self, accelerator) -> None:
        pass

    def examples_from_source(self, rows):
        raise NotImplementedError(f"{self.kind} training takes no batch_source")

    @staticmethod
    def to_device(batch: dict, device) -> dict:
        return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_examples)

    def summary_extra(self) -> dict:
        return {"truncated_responses": self.truncated, **self.data_stats}

    # -- evaluation: the loss's metrics averaged over the eval set (no gradients)
    @torch.no_grad()
    def evaluate(self, model, accelerator) -> dict:
        model.eval()
        world, rank = accelerator.num_processes, accelerator.process_index
        size = self.cfg.eval_batch_size or self.cfg.micro_batch_size
        # every example once: process r takes examples r, r + world, ... Shards differ by at most one example,
        # and collective forwards (FSDP / ZeRO-3) need the same number of forwards on every process, so a shorter
        # shard runs a copy of an example as a dummy chunk that adds nothing (share 0, no loss, no weights)
        shard = self.eval_examples[rank::world]
        n_chunks = -(-len(self.eval_examples[0::world]) // size)           # rank 0's shard is the longest
        per_process = sum(self.units([e]) for e in self.eval_examples) / world  # global units / processes
        step_metrics, loss = StepMetrics(), torch.zeros((), device=accelerator.device)
        for k in range(n_chunks):
            chunk = shard[k * size: (k + 1) * size]
            real = bool(chunk)
            batch = self.to_device(self.collate(chunk or self.eval_examples[:1]), accelerator.device)
            with accelerator.autocast():
                loss_sum, metrics, log_weights = self.loss(model, batch)
            if real:
                loss = loss + loss_sum.double() / per_process
                step_metrics.add(metrics, self.units(chunk) / per_process, log_weights)
            else:
                step_metrics.add_placeholder(metrics, log_weights)
        step_metrics.finalize()
        if self.normalize_over_step:  # normalized over the whole eval set, as over a training step
            factor = self_normalizer(step_metrics, self.normalize_over_step, accelerator)
            loss = loss * factor
            step_metrics.scale_weights(self.normalize_over_step, factor)
        values = {**step_metrics.values, "loss": loss}
        return {f"eval/{k}": v for k, v in to_floats(values, accelerator, step_metrics.weight_sums).items()}
