"""What the loop needs from a task (sft, rm, pref); shared data loading and evaluation."""

from __future__ import annotations

import torch

from isdaa.data import load_rows


class Task:
    """Subclasses set `tokenizer`, `model`, `train_examples`, `eval_examples` in `build`, and define
    `collate(examples) -> batch`, `units(examples) -> int` (loss denominator) and
    `loss(model, batch) -> (sum of per-unit losses, {name: 0-dim tensor mean}, IS weights or None)`."""

    kind = "task"
    eval_examples: list | None = None

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
        from isdaa.train.loop import StepMetrics, to_floats

        model.eval()
        world = accelerator.num_processes
        # equal shards (FSDP / ZeRO-3 forwards are collective): the last len % world examples are dropped
        usable = len(self.eval_examples) // world * world
        examples = self.eval_examples[:usable][accelerator.process_index:: world]
        size = self.cfg.eval_batch_size or self.cfg.micro_batch_size
        chunks = [examples[i: i + size] for i in range(0, len(examples), size)]
        total = sum(self.units(c) for c in chunks)
        step_metrics, loss = StepMetrics(), torch.zeros((), device=accelerator.device)
        for chunk in chunks:
            batch = self.to_device(self.collate(chunk), accelerator.device)
            with accelerator.autocast():
                loss_sum, metrics, weights = self.loss(model, batch)
            loss = loss + loss_sum.float() / total
            step_metrics.add(metrics, self.units(chunk) / total, weights)
        values = {**step_metrics.finalize(), "loss": loss}
        return {f"eval/{k}": v for k, v in to_floats(values, accelerator, step_metrics.all_weights).items()}
