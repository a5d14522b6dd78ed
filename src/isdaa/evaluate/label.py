"""Golden-labelled preference data (the paper's D_golden, Section 4.1; METHOD.md "Controlled data").

Sample n responses per prompt from a policy (pi_b; usually the SFT/reference policy at T = 1), score
them with the golden reward, label consecutive pairs (y_0, y_1), (y_2, y_3), ... by Bradley-Terry
(sampled: p(first wins) = sigmoid(r1 - r2)) or by argmax (ties broken by a seeded coin), and keep the
log-probs needed by IS-DAAs:
    chosen_logps / rejected_logps          log pi_b of the response ids the trainer will see
                                           (tokenizer(text) + [eos]: the sampled ids for finished
                                           responses that round-trip), under the sampling
                                           temperature (softmax(logits / T)); top-p is not supported
    ref_chosen_logps / ref_rejected_logps  log pi_ref (T = 1); the same numbers when ref is the
                                           sampler at T = 1
Resumable: with `out_dir`, prompts are processed in shards of `shard_size`, each shard written
atomically (`shard-00000.jsonl`) with its own seed; a rerun loads finished shards instead of redoing them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isdaa.evaluate.rewards import RewardFn, score
from isdaa.evaluate.sampling import encode_prompts, sample_logps, sample_responses
from isdaa.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from isdaa.logprobs import score_responses


@dataclass
class LabelSettings:
    n: int = 2
    temperature: float = 1.0
    labeling: str = "bt"          # "bt" (Bradley-Terry, sampled) | "argmax"
    max_new_tokens: int = 128
    seed: int = 0
    shard_size: int = 1024

    def __post_init__(self):
        if self.labeling not in ("bt", "argmax"):
            raise ValueError(f"labeling must be 'bt' or 'argmax', got {self.labeling!r}")
        if self.n < 2 or self.n % 2:
            raise ValueError(f"n must be an even number >= 2 (consecutive pairs), got {self.n}")
        if self.temperature <= 0:
            raise ValueError("label sampling needs temperature > 0")


def bt_first_wins(r1: np.ndarray, r2: np.ndarray, rng: np.random.Generator, labeling: str = "bt") -> np.ndarray:
    """(P,) bool: does the first response of each pair win? BT: with prob sigmoid(r1 - r2);
    argmax: r1 > r2, ties by a fair coin."""
    u = rng.random(len(r1))
    if labeling == "bt":
        return u < 1.0 / (1.0 + np.exp(-(np.asarray(r1) - np.asarray(r2))))
    return np.where(r1 == r2, u < 0.5, np.asarray(r1) > np.asarray(r2))


def _label_shard(model, ref, tokenizer, prompts, reward, s: LabelSettings, seed: int, batch_size: int) -> list[dict]:
    prompt_ids = encode_prompts(tokenizer, prompts)
    samples = sample_responses(model, tokenizer, prompt_ids, s.n, s.temperature, 1.0, s.max_new_tokens,
                               seed, batch_size)
    texts = [x.text for x in samples]
    rewards = np.array(score(reward, [prompts[x.prompt_index] for x in samples], texts))
    p_ids = [prompt_ids[x.prompt_index] for x in samples]
    # The trainer re-tokenizes the text (ARCHITECTURE.md: tokenizer(response) + [eos]); the stored
    # log-probs must be those of exactly those ids, or the IS ratio compares different sequences. They
    # equal the sampled ids for a finished response whose text round-trips (the usual case); otherwise
    # (no EOS within max_new_tokens, special tokens dropped by decoding) the trainer's ids are scored.
    eos = tokenizer.eos_token_id
    r_ids = [ids + [eos] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    exact = np.array([t == x.response_ids for t, x in zip(r_ids, samples)], dtype=bool)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lp_model = sample_logps(model, prompt_ids, samples, batch_size, pad)  # T = 1, on the sampled ids
    redo = np.flatnonzero(~exact)
    if len(redo):
        lp_model[redo] = score_responses(model, [p_ids[i] for i in redo], [r_ids[i] for i in redo], batch_size,
                                        pad_id=pad)
    lp_b = lp_model if s.temperature == 1.0 else score_responses(model, p_ids, r_ids, batch_size,
                                                                temperature=s.temperature, pad_id=pad)
    if ref is None or ref is model:
        lp_ref = lp_model
    else:
        lp_ref = score_responses(ref, p_ids, r_ids, batch_size, pad_id=pad)
    first, second = np.arange(0, len(samples), 2), np.arange(1, len(samples), 2)  # consecutive pairs
    wins = bt_first_wins(rewards[first], rewards[second], np.random.default_rng(seed), s.labeling)
    rows = []
    for a, b, w in zip(first, second, wins):
        c, r = (a, b) if w else (b, a)
        rows.append({
            "prompt": prompts[samples[a].prompt_index],
            "chosen": texts[c], "rejected": texts[r],
            "chosen_logps": float(lp_b[c]), "rejected_logps": float(lp_b[r]),
            "ref_chosen_logps": float(lp_ref[c]), "ref_rejected_logps": float(lp_ref[r]),
            "chosen_reward": float(rewards[c]), "rejected_reward": float(rewards[r]),
            "chosen_finished": samples[c].finished, "rejected_finished": samples[r].finished,
            "chosen_ids_exact": bool(exact[c]), "rejected_ids_exact": bool(exact[r]),
        })
    return rows


def label_pairs(
    model,
    tokenizer,
    prompts: Sequence[str],
    reward: RewardFn,
    n: int = 2,
    temperature: float = 1.0,
    labeling: str = "bt",
    seed: int = 0,
    max_new_tokens: int = 128,
    batch_size: int = 256,
    ref=None,
    out_dir: str | Path | None = None,
    shard_size: int = 1024,
    progress=None,
) -> list[dict]:
    """Build a golden-labelled preference dataset; returns rows in the standard format
    (prompt, chosen, rejected) plus chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_reward, rejected_reward, chosen_finished, rejected_finished, chosen_ids_exact,
    rejected_ids_exact (False: the log-probs are of the trainer's re-tokenization, not the sampled ids;
    see `_label_shard`). n/2 pairs per prompt.

    model: the sampler pi_b (in memory); ref: pi_ref (None: the sampler). Shard k uses seed + k, so
    results do not depend on whether the run was interrupted. With `out_dir`: shards, settings.json
    and the concatenation `pairs.jsonl` (ready for `isdaa train pref`); settings must match a previous
    run in the same folder.
    """
    s = LabelSettings(n, temperature, labeling, max_new_tokens, seed, shard_size)
    prompts = list(prompts)
    bounds = list(range(0, len(prompts), shard_size)) or [0]
    if out_dir is None:
        return [row for k, lo in enumerate(bounds) for row in
                _label_shard(model, ref, tokenizer, prompts[lo: lo + shard_size], reward, s, seed + k, batch_size)]
    out_dir = Path(out_dir)
    meta = {**dataclasses.asdict(s), "n_prompts": len(prompts)}
    meta_path = out_dir / "settings.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta:
            raise ValueError(f"{out_dir} holds shards made with other settings ({old}); use a new folder")
    else:
        atomic_write_json(meta_path, meta)
    rows = []
    for k, lo in enumerate(bounds):
        path = out_dir / f"shard-{k:05d}.jsonl"
        if path.exists():
            shard = read_jsonl(path)
        else:
            shard = _label_shard(model, ref, tokenizer, prompts[lo: lo + shard_size], reward, s, seed + k,
                                 batch_size)
            atomic_write_jsonl(path, shard)
        rows.extend(shard)
        if progress:
            progress(k + 1, len(bounds))
    atomic_write_jsonl(out_dir / "pairs.jsonl", rows)
    return rows
