"""Preference training with any method of the registry (`isdaa.losses.METHODS`), selected by name.

The trainer never branches on the method: it always passes response lengths and behavior log-probs
(the dataset's `chosen_logps` / `rejected_logps` when present, else None so that pi_b = pi_ref, with
a warning for a method that reads them) and every loss option; the registry entry decides what is
read. Dropout is off in policy and reference (`disable_dropout`), so that at step 1 pi_theta = pi_ref.

Before training (`check_logps`), stored log-probs are checked on a sample of rows against the models
on the trainer's own ids: dataset `ref_*` columns against the reference, behavior columns against
the initial policy for rows that declare it as their sampler (`behavior_model`, at temperature 1, as
`isdaa label` writes). A mismatch is an error naming the rows and the likely cause, or recomputes.
The registry entry also decides whether reference log-probs are needed at all
(`Method.requires_reference`: not for a reference-free method, unless its IS variant has no behavior
columns and falls back to pi_b = pi_ref). Chosen and rejected go through the policy in one concatenated forward (rows [0, B) chosen, [B, 2B) rejected).

Reference log-probs, in order of precedence: the dataset's `ref_chosen_logps` /
`ref_rejected_logps` as given; else (`ref_logps: precompute`, default) one pass with the initial
policy (or `ref_model`) before training, cached (reference.py); else (`on_the_fly`) a frozen
reference model in memory (with LoRA: the policy with its adapter disabled, no second model).
Rows from a `batch_source` without reference columns are scored on the fly the same way.

Log-probs come from `isdaa.logprobs.response_logps`: one call of the (wrapped) model's forward that
projects only the response-predicting positions through the LM head (`response_only_head`, default),
or the full logits. With `pack_pairs` (default: on) each pair is one packed row [prompt, chosen,
rejected] (`isdaa.logprobs.pair_response_logps`): the prompt goes through the model once per pair.
"""

from __future__ import annotations

import dataclasses
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from isdaa.config import check_schedule
from isdaa.data import collate_pref, tokenize_pref
from isdaa.logprobs import (
    packed_pairs_supported,
    pair_response_logps,
    response_head_supported,
    response_logps,
)
from isdaa.losses import METHODS, preference_loss
from isdaa.train import reference
from isdaa.train.base import Task
from isdaa.train.models import load_causal_lm, load_tokenizer


class PrefTask(Task):
    kind = "pref"

    _warned_behavior = False

    def build(self, accelerator, online=False):
        cfg = self.cfg
        self.accelerator = accelerator
        self._progress = cfg.progress and accelerator.is_main_process
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = load_causal_lm(cfg.model, self.tokenizer, no_dropout=cfg.disable_dropout)
        self.ref_model = None
        self.options = dataclasses.asdict(cfg.loss)
        self.ref_cache_hits = 0
        # online (batch_source): the dataset is not iterated; pairs come from the source every step
        self.train_examples = [] if online else self.tokenize(self.load("train"), self.data_stats)
        self.truncated = sum(e["chosen_truncated"] + e["rejected_truncated"] for e in self.train_examples)
        self.eval_examples = self.tokenize(self.load("eval")) if cfg.data.eval else None
        for msg in check_schedule(cfg, len(self.train_examples), online):
            warnings.warn(msg, stacklevel=2)
        self._warn_no_behavior(self.train_examples)

    def tokenize(self, rows, stats=None, drop_identical=True):
        d = self.cfg.data
        return tokenize_pref(rows, self.tokenizer, d.max_length, d.max_prompt_length, stats, drop_identical,
                             d.drop_unfinished, progress=self._progress and drop_identical)  # not online batches

    def _warn_no_behavior(self, examples):
        """Once per run: an importance-weighted method on rows without behavior log-probs uses pi_b = pi_ref."""
        if self._warned_behavior or not METHODS[self.cfg.method].uses_behavior_logps:
            return
        missing = sum("chosen_logps" not in e for e in examples)
        if missing:
            self._warned_behavior = True
            warnings.warn(f"method {self.cfg.method!r}: {missing} of {len(examples)} pairs have no behavior log-probs "
                          "(chosen_logps / rejected_logps), so pi_b = pi_ref for them (IS weight = "
                          "pi_theta / pi_ref); label the data with `isdaa label` to store pi_b", stacklevel=3)

    # -- reference log-probs
    def after_prepare(self, accelerator):
        cfg = self.cfg
        policy_is_ref = cfg.ref_model in (None, cfg.model.name_or_path)
        if cfg.check_logps != "off":
            self._check_stored_logps(accelerator, policy_is_ref)
        if cfg.ref_logps == "on_the_fly":
            return
        for examples in (self.train_examples, self.eval_examples or []):
            if not examples or all("ref_chosen_logps" in e for e in examples) or not self._needs_reference(
                    all("chosen_logps" in e for e in examples)):
                continue
            ref_path = cfg.ref_model or cfg.model.name_or_path
            key = reference.cache_key(ref_path, cfg.model, accelerator.mixed_precision, examples)
            cache_dir = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else reference.default_cache_dir()
            model = self.model if policy_is_ref else self._reference()
            with self._adapter_off(model) if policy_is_ref else nullcontext():
                chosen, rejected, hit = reference.load_or_compute(
                    model, examples, accelerator, cfg.eval_batch_size or 2 * cfg.micro_batch_size,
                    self.tokenizer.pad_token_id, key, cache_dir, response_only_head=cfg.response_only_head)
            self.ref_cache_hits += hit
            for e, c, r in zip(examples, chosen.tolist(), rejected.tolist()):
                e.setdefault("ref_chosen_logps", c)
                e.setdefault("ref_rejected_logps", r)
        if not policy_is_ref:
            self.ref_model = None  # precomputed: free it

    def _check_stored_logps(self, accelerator, policy_is_ref):
        """`reference.check_stored`: dataset ref_* columns against the reference model, behavior columns
        against the initial policy (rows declaring it their sampler). A mismatch raises (check_logps:
        error) or replaces those columns on every row (recompute; ref_*: by the precompute pass or on the
        fly, behavior: one pass of the initial policy)."""
        cfg = self.cfg
        bs, pad = cfg.eval_batch_size or 2 * cfg.micro_batch_size, self.tokenizer.pad_token_id

        def mismatch(model, rows, cols, who):
            with self._adapter_off(model) if model is self.model else nullcontext():
                err = reference.check_stored(model, rows, cols, who, accelerator, bs, pad, cfg.check_logps_rows,
                                             cfg.seed, cfg.data, cfg.response_only_head)
            if err and cfg.check_logps == "error":
                raise ValueError(err)
            if err:
                _report(accelerator, f"{err.splitlines()[0]} -> check_logps=recompute: recomputing them")
            return err is not None

        for examples in (self.train_examples, self.eval_examples or []):
            ref_rows = [e for e in examples if "ref_chosen_logps" in e]
            ref_name = f"reference model ({cfg.ref_model or cfg.model.name_or_path})"
            needed = self._needs_reference(all("chosen_logps" in e for e in examples))  # not: unused
            if ref_rows and needed and mismatch(self.model if policy_is_ref else self._reference(), ref_rows,
                                                reference.REF_COLUMNS, ref_name):
                for e in examples:
                    e.pop("ref_chosen_logps", None), e.pop("ref_rejected_logps", None)
            if not METHODS[cfg.method].uses_behavior_logps:
                continue
            rows = [e for e in examples if "chosen_logps" in e and reference.sampled_by(e, cfg.model.name_or_path)]
            if rows and mismatch(self.model, rows, reference.BEHAVIOR_COLUMNS,
                                 f"initial policy ({cfg.model.name_or_path})"):
                with self._adapter_off(self.model):
                    chosen, rejected = reference.compute(self.model, rows, accelerator, bs, pad,
                                                         cfg.response_only_head)
                for e, c, r in zip(rows, chosen.tolist(), rejected.tolist()):
                    e["chosen_logps"], e["rejected_logps"] = c, r
    def _needs_reference(self, has_behavior_logps: bool) -> bool:
        return METHODS[self.cfg.method].requires_reference(has_behavior_logps)

    def _adapter_off(self, model):
        unwrapped = self.accelerator.unwrap_model(model)
        return unwrapped.disable_adapter() if hasattr(unwrapped, "peft_config") else nullcontext()

    def _reference(self):
        """The frozen reference model (loaded once, on demand)."""
        if self.ref_model is None:
            if self.cfg.model.lora is not None and self.cfg.ref_model is None:
                self.ref_model = self.model  # used with the adapter disabled
            else:
                self.ref_model = load_causal_lm(self.cfg.model, self.tokenizer, self.cfg.ref_model, trainable=False,
                                                no_dropout=self.cfg.disable_dropout).to(self.accelerator.device)
        return self.ref_model

    @torch.no_grad()
    def _ref_logps(self, batch):
        model = self._reference()
        ctx = self._adapter_off(model) if model is self.model else nullcontext()
        with ctx:
            logps = self._logps(model, batch)
        n = batch["n_pairs"]
        return logps[:n], logps[n:]

    def _logps(self, model, batch):
        """(2B,) summed response log-probs of the concatenated batch, through `model`'s own forward."""
        head_only = self.cfg.response_only_head and response_head_supported(model)
        if head_only and self.cfg.pack_pairs and packed_pairs_supported(model):
            return pair_response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                       batch["n_pairs"], head_chunk_mb=self.cfg.head_chunk_mb)
        return response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                              response_only_head=head_only, head_chunk_mb=self.cfg.head_chunk_mb)

    # -- the loop's interface
    def examples_from_source(self, rows):
        """A batch_source returns rows (standard/conversational dicts, optional logps columns) or one
        collated batch (collate_pref's keys); the latter is used as one micro-batch."""
        if isinstance(rows, dict):
            return [rows]
        examples = self.tokenize(list(rows), drop_identical=False)  # sampled pairs may coincide
        self._warn_no_behavior(examples)
        return examples

    def collate(self, examples):
        if len(examples) == 1 and "input_ids" in examples[0]:
            return examples[0]
        return collate_pref(examples, self.tokenizer.pad_token_id)

    def units(self, examples):
        return sum(e.get("n_pairs", 1) for e in examples)

    def loss(self, model, batch):
        n = batch["n_pairs"]
        logps = self._logps(model, batch)                                     # (2B,) float32
        # the data columns chosen_logps / rejected_logps hold pi_b's log-probs (the release's names)
        behavior_chosen_logps, behavior_rejected_logps = batch.get("chosen_logps"), batch.get("rejected_logps")
        if "ref_chosen_logps" in batch:
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        elif self._needs_reference(behavior_chosen_logps is not None):
            ref_c, ref_r = self._ref_logps(batch)
        else:  # reference-free method: no reference forward
            ref_c = ref_r = None
        out = preference_loss(
            self.cfg.method, self.cfg.beta, logps[:n], logps[n:], ref_c, ref_r,
            behavior_chosen_logps=behavior_chosen_logps, behavior_rejected_logps=behavior_rejected_logps,
            chosen_lengths=batch["chosen_lengths"], rejected_lengths=batch["rejected_lengths"], **self.options,
        )
        return out.loss * n, out.metrics, out.weights

    def summary_extra(self):
        return {**super().summary_extra(), "ref_cache_hits": self.ref_cache_hits}


def _report(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(message)
