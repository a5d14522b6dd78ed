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
columns and falls back to pi_b = pi_ref). Chosen and rejected go through the policy in one concatenated
forward (rows [0, B) chosen, [B, 2B) rejected).

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
import hashlib
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from isdaa.config import check_schedule
from isdaa.data import collate_pref, tokenize_pref
from isdaa.importance import RANDOM_CONTROLS
from isdaa.logprobs import (
    packed_pairs_supported,
    pair_response_logps,
    response_head_supported,
    response_logps,
)
from isdaa.losses import METHODS, preference_loss
from isdaa.train import ref_sync, reference
from isdaa.train.base import Task
from isdaa.train.models import load_causal_lm, load_tokenizer


class PrefTask(Task):
    kind = "pref"

    _warned_behavior = False
    _warned_degenerate = False

    def __init__(self, cfg):
        super().__init__(cfg)
        self._pack_ok: dict[int, bool] = {}  # id(model) -> packed pairs checked and used

    def build(self, accelerator, online=False):
        cfg = self.cfg
        self.accelerator = accelerator
        self._progress = cfg.progress and accelerator.is_main_process
        self.tokenizer = load_tokenizer(cfg.model)
        self.model = load_causal_lm(cfg.model, self.tokenizer, no_dropout=cfg.disable_dropout)
        self.ref_model = None
        self.options = dataclasses.asdict(cfg.loss)
        if METHODS[cfg.method].importance_weighted and self.options["is_self_normalize"]:
            # self-normalized over the whole optimizer step, not per micro-batch: the loss applies the raw
            # clipped weights and the loop divides the accumulated gradient by their mean over the step
            self.normalize_over_step, self.options["is_self_normalize"] = "is", False
        self.ref_cache_hits = 0
        # online (batch_source): the dataset is not iterated; pairs come from the source every step
        self.train_examples = [] if online else self.tokenize(self.load("train"), self.data_stats)
        self.truncated = sum(e["chosen_truncated"] + e["rejected_truncated"] for e in self.train_examples)
        self.eval_examples = self.tokenize(self.load("eval")) if cfg.data.eval else None
        for msg in check_schedule(cfg, len(self.train_examples), online):
            warnings.warn(msg, stacklevel=2)
        self._warn_no_behavior(self.train_examples)
        _check_whole_batch(cfg, accelerator.num_processes)
        if cfg.ref_sync is not None:  # TR-DPO: stored ref_* columns hold the initial reference's log-probs
            ref_sync.check_supported(accelerator)
            self._drop_stored_reference(accelerator)

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
        if cfg.ref_sync is not None:
            self._prepare_ref_sync(accelerator, policy_is_ref)
        if cfg.ref_logps == "on_the_fly":
            return
        for examples in (self.train_examples, self.eval_examples or []):
            if not examples or all("ref_chosen_logps" in e for e in examples) or not self._needs_reference(
                    all("chosen_logps" in e for e in examples)):
                continue
            chosen, rejected = self._initial_reference_logps(accelerator, examples, policy_is_ref)
            if policy_is_ref and cfg.check_logps == "error":  # the initial policy on every row: check pi_b
                self._check_behavior_against(examples, chosen, rejected, accelerator, self.model)
            for e, c, r in zip(examples, chosen.tolist(), rejected.tolist()):
                e.setdefault("ref_chosen_logps", c)
                e.setdefault("ref_rejected_logps", r)
        if not policy_is_ref:
            self.ref_model = None  # precomputed: free it

    def _initial_reference_logps(self, accelerator, examples, policy_is_ref):
        """(chosen, rejected) (N,) log-probs of the initial reference (the policy before training, or
        `ref_model` before any ref_sync), one pass cached under `reference.cache_key`."""
        cfg = self.cfg
        key = reference.cache_key(cfg.ref_model or cfg.model.name_or_path, cfg.model, accelerator.mixed_precision,
                                  examples)
        cache_dir = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else reference.default_cache_dir()
        model = self.model if policy_is_ref else self._reference()
        with self._adapter_off(model) if policy_is_ref else nullcontext():
            chosen, rejected, hit = reference.load_or_compute(
                model, examples, accelerator, cfg.eval_batch_size or 2 * cfg.micro_batch_size,
                self.tokenizer.pad_token_id, key, cache_dir, response_only_head=cfg.response_only_head)
        self.ref_cache_hits += hit
        return chosen, rejected

    # -- TR-DPO (train/ref_sync.py)
    def _drop_stored_reference(self, accelerator):
        """ref_sync: the rows' ref_* columns would stand for a reference that moves; drop them, once, saying so."""
        dropped = 0
        for examples in (self.train_examples, self.eval_examples or []):
            for e in examples:
                dropped += e.pop("ref_chosen_logps", None) is not None
                e.pop("ref_rejected_logps", None)
        if dropped:
            _report(accelerator, f"ref_sync: ignoring the ref_chosen_logps / ref_rejected_logps of {dropped} pairs "
                                 "(the reference moves; it is scored in memory at every step)")

    def _prepare_ref_sync(self, accelerator, policy_is_ref):
        """pi_b never moves: rows without behavior columns get the INITIAL reference's log-probs as pi_b (before
        any update); then the reference in memory, restored to the synced one a resume starts from."""
        for examples in (self.train_examples, self.eval_examples or []):
            missing = [e for e in examples if "chosen_logps" not in e]
            if missing:
                chosen, rejected = self._initial_reference_logps(accelerator, missing, policy_is_ref)
                for e, c, r in zip(missing, chosen.tolist(), rejected.tolist()):
                    e["chosen_logps"], e["rejected_logps"] = c, r
                    if not policy_is_ref:  # pi_b = the initial ref_model, not the initial policy
                        e["behavior_model"] = self.cfg.ref_model
        ref = self._reference()
        ref_sync.check_compatible(ref, accelerator.unwrap_model(self.model))
        synced = ref_sync.restore(ref, self.cfg.output_dir, self.cfg.ref_sync.steps, accelerator.is_main_process)
        if synced:
            _report(accelerator, f"ref_sync: the reference restored to its update at step {synced}")

    def _check_stored_logps(self, accelerator, policy_is_ref):
        """`reference.check_stored`: dataset ref_* columns against the reference model, behavior columns
        against the initial policy (rows declaring it their sampler). A mismatch raises (check_logps:
        error) or replaces those columns on every row (recompute; ref_*: by the precompute pass or on the
        fly, behavior: one pass of the initial policy)."""
        cfg = self.cfg
        bs, pad = cfg.eval_batch_size or 2 * cfg.micro_batch_size, self.tokenizer.pad_token_id

        def mismatch(model, rows, cols, who, hint=""):
            with self._adapter_off(model) if model is self.model else nullcontext():
                err = reference.check_stored(model, rows, cols, who, accelerator, bs, pad, cfg.check_logps_rows,
                                             cfg.seed, cfg.data, cfg.response_only_head, hint)
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
            rows = [e for e in examples if "chosen_logps" in e and self._behavior_is_initial(e)]
            if rows and mismatch(self.model, rows, reference.BEHAVIOR_COLUMNS,
                                 f"initial policy ({cfg.model.name_or_path})", reference.BEHAVIOR_HINT):
                with self._adapter_off(self.model):
                    chosen, rejected = reference.compute(self.model, rows, accelerator, bs, pad,
                                                         cfg.response_only_head)
                for e, c, r in zip(rows, chosen.tolist(), rejected.tolist()):
                    e["chosen_logps"], e["rejected_logps"] = c, r

    def _behavior_is_initial(self, example) -> bool:
        return reference.behavior_is_initial(example, self.cfg.model.name_or_path)

    def _check_behavior_against(self, examples, chosen, rejected, accelerator, model):
        """Every row's behavior columns against the initial policy's log-probs the reference pass just
        computed (free: no second pass), for an IS method and rows whose pi_b is the initial policy."""
        if not METHODS[self.cfg.method].uses_behavior_logps:
            return
        idx = [i for i, e in enumerate(examples) if "chosen_logps" in e and self._behavior_is_initial(e)]
        if not idx:
            return
        rows = [examples[i] for i in idx]
        who = f"initial policy ({self.cfg.model.name_or_path})"
        tol = reference.tolerance(accelerator, model)
        bad = reference.mismatches(rows, chosen[idx], rejected[idx], reference.BEHAVIOR_COLUMNS, who, tol)
        if bad:
            raise ValueError(reference.mismatch_message(bad, rows, reference.BEHAVIOR_COLUMNS, who, tol,
                                                        self.cfg.data, reference.BEHAVIOR_HINT))

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

    def _logps(self, model, batch, with_sq_logsumexp=False):
        """(2B,) summed response log-probs of the concatenated batch, through `model`'s own forward
        (`with_sq_logsumexp`: and their (2B,) sums of logsumexp_v(2 log p(v)), for WPO)."""
        head_only = self.cfg.response_only_head and response_head_supported(model)
        sq = {"with_sq_logsumexp": True} if with_sq_logsumexp else {}
        if head_only and self.cfg.pack_pairs and self._packs(model, batch):
            return pair_response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                       batch["n_pairs"], head_chunk_mb=self.cfg.head_chunk_mb, **sq)
        return response_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                              response_only_head=head_only, head_chunk_mb=self.cfg.head_chunk_mb, **sq)

    def _packs(self, model, batch) -> bool:
        """Whether `model` gets packed pairs: `packed_pairs_supported` (refuses families known to misread them),
        then, once per model, its packed log-probs compared with each sequence's own forward on the first
        batch (all processes agree); a mismatch or an error turns packing off for it, with one warning."""
        key = id(model)
        if key not in self._pack_ok:
            self._pack_ok[key] = packed_pairs_supported(model) and self._packed_matches(model, batch)
        return self._pack_ok[key]

    def _packed_matches(self, model, batch) -> bool:
        ids, attn, resp, n = batch["input_ids"], batch["attention_mask"], batch["response_mask"], batch["n_pairs"]
        was_training = model.training
        model.eval()  # no dropout: the two forwards must see the same function
        weights = next(model.parameters()).dtype
        # full precision where the weights are (autocast off): a misread layout moves log-probs by less than
        # bf16's round-off on long responses (GPT-Neo's local window: 0.05 nats)
        precise = torch.autocast(ids.device.type, enabled=False) if weights in (torch.float32, torch.float64) \
            else nullcontext()
        problem = None
        try:
            with torch.no_grad(), precise:
                plain = response_logps(model, ids, attn, resp)
                try:
                    packed = pair_response_logps(model, ids, attn, resp, n)
                except Exception as err:  # noqa: BLE001 -- any failure of the packed layout falls back
                    problem = f"the packed forward failed ({type(err).__name__}: {err})"
        finally:
            model.train(was_training)
        if problem is None:
            atol, rtol = reference.tolerance(self.accelerator, model)
            gap = (packed.float() - plain.float()).abs()
            if bool((gap > atol + rtol * plain.float().abs()).any()):
                problem = (f"packed log-probs differ from each sequence's own forward by up to "
                           f"{float(gap.max()):.3g} nats")
        ok = torch.tensor([0.0 if problem else 1.0], device=ids.device)
        if self.accelerator.num_processes > 1:  # every process packs, or none
            ok = self.accelerator.gather(ok).min().reshape(1)
        if problem or not bool(ok.item()):
            name = type(self.accelerator.unwrap_model(model)).__name__
            warnings.warn(f"pack_pairs: {problem or 'another process found packed log-probs wrong'} for {name} on "
                          "the first batch; pairs go through as separate rows for this model (same values as "
                          "pack_pairs: false)", stacklevel=2)
            return False
        return True

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
        batch = collate_pref(examples, self.tokenizer.pad_token_id)
        batch["rows"] = [e.get("row", "?") for e in examples]  # host lists, for errors naming dataset rows
        batch["behavior_is_initial"] = [self._behavior_is_initial(e) for e in examples]
        return batch

    def units(self, examples):
        return sum(e.get("n_pairs", 1) for e in examples)

    def loss(self, model, batch):
        n = batch["n_pairs"]
        logps, extra = self._policy_logps(model, batch)                       # (2B,) float32
        # the data columns chosen_logps / rejected_logps hold pi_b's log-probs (the release's names)
        behavior_chosen_logps, behavior_rejected_logps = batch.get("chosen_logps"), batch.get("rejected_logps")
        if self.cfg.ref_sync is not None and behavior_chosen_logps is None:
            raise ValueError("ref_sync (TR-DPO): these pairs (from a batch_source) have no behavior log-probs, and "
                             "pi_b cannot fall back to a reference that moves: give the rows chosen_logps / "
                             "rejected_logps (pi_b's summed log-probs)")
        if "ref_chosen_logps" in batch and self.cfg.ref_sync is None:  # ref_sync: stored values are stale
            ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        elif self._needs_reference(behavior_chosen_logps is not None):
            ref_c, ref_r = self._ref_logps(batch)
        else:  # reference-free method: no reference forward
            ref_c = ref_r = None
        out = preference_loss(
            self.cfg.method, self.cfg.beta, logps[:n], logps[n:], ref_c, ref_r,
            behavior_chosen_logps=behavior_chosen_logps, behavior_rejected_logps=behavior_rejected_logps,
            chosen_lengths=batch["chosen_lengths"], rejected_lengths=batch["rejected_lengths"], **extra, **self.options,
        )
        if (self.at_initial_policy and model.training and behavior_chosen_logps is not None and self.cfg.disable_dropout
                and METHODS[self.cfg.method].uses_behavior_logps and self.cfg.check_logps != "off"):
            self._check_first_step(batch, logps[:n].detach(), logps[n:].detach(), out.metrics)
        return out.loss * n, out.metrics, out.log_weights

    def _check_first_step(self, batch, policy_c, policy_r, metrics):
        """At the first step pi_theta is the initial policy: pairs whose pi_b is the initial policy must have
        IS weight 1 (each stored behavior log-prob within tolerance of the policy's own), which catches wrong
        behavior columns on the rows the start-of-training sample did not hold, before any update; pairs
        declared sampled by another policy get one warning if their weights are already degenerate."""
        rows, initial = batch.get("rows"), batch.get("behavior_is_initial")
        if rows is None:  # a collated batch from a batch_source: no dataset rows to name
            return
        expected = [dict(row=r, chosen_logps=c, rejected_logps=j) for r, c, j, i in
                    zip(rows, batch["chosen_logps"].tolist(), batch["rejected_logps"].tolist(), initial) if i]
        keep = torch.tensor(initial, dtype=torch.bool, device=policy_c.device)
        who = f"initial policy ({self.cfg.model.name_or_path})"
        tol = reference.tolerance(self.accelerator, self.model)
        bad = reference.mismatches(expected, policy_c[keep], policy_r[keep], reference.BEHAVIOR_COLUMNS, who, tol)
        if bad:
            raise ValueError("step 1 (pi_theta = the initial policy), IS weights far from 1: "
                             + reference.mismatch_message(bad, expected, reference.BEHAVIOR_COLUMNS, who, tol,
                                                          self.cfg.data, reference.BEHAVIOR_HINT))
        ess, mean = float(metrics["is/ess"]), float(metrics["is/weight_mean"])
        if not all(initial) and not self._warned_degenerate and (ess < 0.1 or mean < 1e-2):
            self._warned_degenerate = True
            warnings.warn(f"step 1: the IS weights pi_theta / pi_b of pairs sampled by another policy "
                          f"(`behavior_model`) are already degenerate (ESS {ess:.3g}, mean weight {mean:.3g}): the "
                          "loss trains on a few pairs, if any; check that the behavior columns are that policy's "
                          "summed log-probs on these token ids", stacklevel=2)

    def _policy_logps(self, model, batch):
        """(2B,) policy log-probs, and the loss's extra inputs the method asks for: WPO's sq_lse sums
        (`Method.requires_sq_logsumexp`), a random IS control's generator (`_control_generator`)."""
        n, entry, extra = batch["n_pairs"], METHODS[self.cfg.method], {}
        if entry.importance_weighted and self.options["is_control"] in RANDOM_CONTROLS:
            extra["generator"] = self._control_generator(batch)
        logps = self._logps(model, batch, with_sq_logsumexp=entry.requires_sq_logsumexp(self.options))
        if isinstance(logps, tuple):
            logps, sq = logps
            extra.update(policy_chosen_sq_lse=sq[:n], policy_rejected_sq_lse=sq[n:])
        return logps, extra

    def _control_generator(self, batch) -> torch.Generator:
        """The random source of an IS control, seeded by the run's seed and the batch's token ids: the step's
        batch draws the same numbers after a resume, other batches other numbers (the task does not know the
        step; the batch determines it)."""
        digest = hashlib.sha256(f"{self.cfg.seed}|".encode() + batch["input_ids"].cpu().numpy().tobytes()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def summary_extra(self):
        return {**super().summary_extra(), "ref_cache_hits": self.ref_cache_hits}


def _check_whole_batch(cfg, num_processes: int) -> None:
    """A loss over the whole optimizer step's batch (`Method.whole_batch`) runs on one process only (the
    config already requires micro_batch_size = batch_size)."""
    if num_processes > 1 and METHODS[cfg.method].whole_batch(dataclasses.asdict(cfg.loss)):
        raise ValueError(f"method {cfg.method!r} with these loss options computes its loss over the whole optimizer "
                         f"step's batch, which {num_processes} processes would split: run it on one process")


def _report(accelerator, message: str) -> None:
    if accelerator.is_main_process:
        print(message)
