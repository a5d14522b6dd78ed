"""Golden-labelled preference data (the paper's D_golden, Section 4.1; METHOD.md "Controlled data").

Sample n responses per prompt from a policy (pi_b; usually the SFT/reference policy at T = 1), score
them with the golden reward, label consecutive pairs (y_0, y_1), (y_2, y_3), ... by Bradley-Terry
(sampled: p(first wins) = sigmoid(r1 - r2)) or by argmax (ties broken by a seeded coin), and keep the
log-probs needed by IS-DAAs:
    chosen_logps / rejected_logps          log pi_b of exactly the ids the trainer will see: the rows go
                                           through `isdaa.data.tokenize_pref` with the trainer's
                                           max_length / max_prompt_length (the sampled ids for finished
                                           responses that round-trip and fit), under the sampling
                                           temperature (softmax(logits / T)); top-p is not supported
    ref_chosen_logps / ref_rejected_logps  log pi_ref (T = 1) on the same ids; the same numbers when
                                           ref is the sampler at T = 1
A response cut at max_new_tokens is flagged (`chosen_finished` / `rejected_finished` false) and never
completed with an EOS it did not emit: the trainer drops such pairs by default (data.drop_unfinished).
Conversational prompts (message lists) are sampled from the chat template's prompt and written as
conversational rows (the responses as assistant messages), tokenized by the trainer as TRL does.
`behavior_model` / `behavior_temperature` (when `behavior_name` is given) declare pi_b, so that the
trainer can check the stored log-probs against its initial policy.
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

from isdaa.data import encode_prompts, is_chat, render_prompt, tokenize_pref
from isdaa.evaluate.rewards import RewardFn, score
from isdaa.evaluate.sampling import sample_responses
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
    max_length: int = 640         # the trainer's data.max_length / max_prompt_length: the stored log-probs
    max_prompt_length: int = 512  # are those of the ids it will see (same truncation)

    def __post_init__(self):
        if self.labeling not in ("bt", "argmax"):
            raise ValueError(f"labeling must be 'bt' or 'argmax', got {self.labeling!r}")
        if self.n < 2 or self.n % 2:
            raise ValueError(f"n must be an even number >= 2 (consecutive pairs), got {self.n}")
        if self.temperature <= 0:
            raise ValueError("label sampling needs temperature > 0")
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(f"need 0 < max_prompt_length ({self.max_prompt_length}) < max_length ({self.max_length})")


def bt_first_wins(r1: np.ndarray, r2: np.ndarray, rng: np.random.Generator, labeling: str = "bt") -> np.ndarray:
    """(P,) bool: does the first response of each pair win? BT: with prob sigmoid(r1 - r2);
    argmax: r1 > r2, ties by a fair coin."""
    u = rng.random(len(r1))
    if labeling == "bt":
        return u < 1.0 / (1.0 + np.exp(-(np.asarray(r1) - np.asarray(r2))))
    return np.where(r1 == r2, u < 0.5, np.asarray(r1) > np.asarray(r2))


def bt_pairs(rewards, rng: np.random.Generator, labeling: str = "bt") -> list[tuple[int, int]]:
    """THE pair builder (labelling and online DPO): consecutive samples (0, 1), (2, 3), ... of
    `rewards` (S,), labelled by `bt_first_wins`; returns (chosen index, rejected index) per pair."""
    rewards = np.asarray(rewards, dtype=np.float64)
    first, second = np.arange(0, len(rewards) - 1, 2), np.arange(1, len(rewards), 2)
    wins = bt_first_wins(rewards[first], rewards[second], rng, labeling)
    return [(int(a), int(b)) if w else (int(b), int(a)) for a, b, w in zip(first, second, wins)]


def _blank(response) -> bool:
    return not (response if isinstance(response, str) else response[-1]["content"]).strip()


def _scored_logps(model, ref, tokenizer, rows, samples, pairs, prompt_ids, s: LabelSettings, batch_size):
    """log pi_b (at the sampling temperature) and log pi_ref (T = 1) of chosen and rejected, each (P, 2),
    on the ids the trainer will see (`isdaa.data.tokenize_pref` with the trainer's lengths, unfinished
    samples without EOS), and (P, 2) bool: those ids are the sampled ones. A blank response (EOS only:
    the trainer refuses it) is scored on its sampled ids."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # a blank side borrows the other side's text to get through tokenize_pref; its own ids stay the sampled ones
    ok = [i for i, r in enumerate(rows) if not (_blank(r["chosen"]) and _blank(r["rejected"]))]
    fixed = [{**r, "chosen": r["rejected"] if _blank(r["chosen"]) else r["chosen"],
              "rejected": r["chosen"] if _blank(r["rejected"]) else r["rejected"]} for r in (rows[i] for i in ok)]
    examples = dict(zip(ok, tokenize_pref(fixed, tokenizer, s.max_length, s.max_prompt_length,
                                          drop_identical=False, drop_unfinished=False)))
    p_ids, r_ids, exact = [], [], np.zeros((len(rows), 2), dtype=bool)
    for i, pair in enumerate(pairs):
        for j, (k, side) in enumerate(zip(pair, ("chosen", "rejected"))):
            sampled_p, sampled_r = prompt_ids[samples[k].prompt_index], samples[k].response_ids
            e = examples.get(i)
            p = e["prompt_ids"] if e else sampled_p
            r = sampled_r if _blank(rows[i][side]) else e[f"{side}_ids"]
            p_ids.append(p)
            r_ids.append(r)
            exact[i, j] = p == sampled_p and r == sampled_r
    lp_b = score_responses(model, p_ids, r_ids, batch_size, temperature=s.temperature, pad_id=pad)
    if (ref is None or ref is model) and s.temperature == 1.0:
        lp_ref = lp_b
    else:
        lp_ref = score_responses(model if ref is None else ref, p_ids, r_ids, batch_size, pad_id=pad)
    return lp_b.reshape(-1, 2), lp_ref.reshape(-1, 2), exact


def _label_shard(model, ref, tokenizer, prompts, reward, s: LabelSettings, seed: int, batch_size: int,
                 behavior_name: str | None = None) -> list[dict]:
    prompt_ids = encode_prompts(tokenizer, prompts)  # the trainer's prompt rule (chat template, BOS)
    samples = sample_responses(model, tokenizer, prompt_ids, s.n, s.temperature, 1.0, s.max_new_tokens,
                               seed, batch_size)
    texts = [x.text for x in samples]
    shown = [render_prompt(tokenizer, p) for p in prompts]  # the reward reads text
    rewards = np.array(score(reward, [shown[x.prompt_index] for x in samples], texts))
    pairs = bt_pairs(rewards, np.random.default_rng(seed), s.labeling)
    chat = [is_chat(p) for p in prompts]

    def response(k):  # a conversational prompt gets an assistant message (the trainer renders it, as TRL)
        return [{"role": "assistant", "content": texts[k]}] if chat[samples[k].prompt_index] else texts[k]

    rows = [{"prompt": prompts[samples[c].prompt_index], "chosen": response(c), "rejected": response(r),
             "chosen_finished": samples[c].finished, "rejected_finished": samples[r].finished} for c, r in pairs]
    lp_b, lp_ref, exact = _scored_logps(model, ref, tokenizer, rows, samples, pairs, prompt_ids, s, batch_size)
    for row, (c, r), b, f, x in zip(rows, pairs, lp_b, lp_ref, exact):
        row.update({
            "chosen_logps": float(b[0]), "rejected_logps": float(b[1]),
            "ref_chosen_logps": float(f[0]), "ref_rejected_logps": float(f[1]),
            "chosen_reward": float(rewards[c]), "rejected_reward": float(rewards[r]),
            "chosen_ids_exact": bool(x[0]), "rejected_ids_exact": bool(x[1]),
        })
        if behavior_name is not None:
            row.update(behavior_model=behavior_name, behavior_temperature=s.temperature)
    return rows


def label_pairs(
    model,
    tokenizer,
    prompts: Sequence,
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
    max_length: int = 640,
    max_prompt_length: int = 512,
    behavior_name: str | None = None,
) -> list[dict]:
    """Build a golden-labelled preference dataset; returns rows in the standard format
    (prompt, chosen, rejected) plus chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps,
    chosen_reward, rejected_reward, chosen_finished, rejected_finished, chosen_ids_exact,
    rejected_ids_exact (False: the trainer's ids, on which the log-probs are computed, are not the
    sampled ids: re-tokenization, truncation or the chat template's end of turn), and, with
    `behavior_name`, behavior_model / behavior_temperature. n/2 pairs per prompt. Prompts are strings
    or message lists; max_length / max_prompt_length must be the trainer's (data.*).

    model: the sampler pi_b (in memory); ref: pi_ref (None: the sampler). Shard k uses seed + k, so
    results do not depend on whether the run was interrupted. With `out_dir`: shards, settings.json
    and the concatenation `pairs.jsonl` (ready for `isdaa train pref`); settings must match a previous
    run in the same folder.
    """
    s = LabelSettings(n, temperature, labeling, max_new_tokens, seed, shard_size, max_length, max_prompt_length)
    prompts = list(prompts)
    bounds = list(range(0, len(prompts), shard_size)) or [0]
    if out_dir is None:
        return [row for k, lo in enumerate(bounds) for row in
                _label_shard(model, ref, tokenizer, prompts[lo: lo + shard_size], reward, s, seed + k, batch_size,
                             behavior_name)]
    out_dir = Path(out_dir)
    _claim_folder(out_dir, {**dataclasses.asdict(s), "n_prompts": len(prompts)})
    rows = []
    for k, lo in enumerate(bounds):
        path = out_dir / f"shard-{k:05d}.jsonl"
        if path.exists():
            shard = read_jsonl(path)
        else:
            shard = _label_shard(model, ref, tokenizer, prompts[lo: lo + shard_size], reward, s, seed + k,
                                 batch_size, behavior_name)
            atomic_write_jsonl(path, shard)
        rows.extend(shard)
        if progress:
            progress(k + 1, len(bounds))
    atomic_write_jsonl(out_dir / "pairs.jsonl", rows)
    return rows


def _claim_folder(out_dir: Path, meta: dict) -> None:
    """settings.json of a labelling folder: written on first use; a folder holding shards made with other
    settings is refused (its shards would be mixed into these)."""
    meta_path = out_dir / "settings.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old != meta:
            raise ValueError(f"{out_dir} holds shards made with other settings ({old}); use a new folder")
    else:
        atomic_write_json(meta_path, meta)
