"""Collation: padded batches of pre-tokenized pairs (`collate_pref`) and SFT examples (`collate_sft`)."""

from __future__ import annotations

import torch

from isdaa.data.rows import PREF_FLOAT_COLUMNS
from isdaa.padding import pad_batch


def collate_pref(examples: list[dict], pad_id: int) -> dict:
    """One concatenated batch: rows [0, B) chosen, rows [B, 2B) rejected (same prompts).

    input_ids / attention_mask / response_mask (2B, T); chosen_lengths / rejected_lengths (B,)
    response tokens with EOS; the float columns (B,) when every example has them; n_pairs, n_tokens
    (host ints, for throughput without a device sync)."""
    seqs = [e["prompt_ids"] + e["chosen_ids"] for e in examples] + \
           [e["prompt_ids"] + e["rejected_ids"] for e in examples]
    prompt_lens = [len(e["prompt_ids"]) for e in examples] * 2
    batch = pad_batch(seqs, pad_id, prompt_lens=prompt_lens)
    batch["chosen_lengths"] = torch.tensor([len(e["chosen_ids"]) for e in examples], dtype=torch.long)
    batch["rejected_lengths"] = torch.tensor([len(e["rejected_ids"]) for e in examples], dtype=torch.long)
    for col in PREF_FLOAT_COLUMNS:
        if all(col in e for e in examples):
            batch[col] = torch.tensor([e[col] for e in examples], dtype=torch.float32)
    batch["n_pairs"] = len(examples)
    batch["n_tokens"] = sum(len(s) for s in seqs)
    return batch


def collate_sft(examples: list[dict], pad_id: int) -> dict:
    seqs = [e["prompt_ids"] + e["response_ids"] for e in examples]
    batch = pad_batch(seqs, pad_id, prompt_lens=[len(e["prompt_ids"]) for e in examples])
    batch["n_examples"] = len(examples)
    batch["n_tokens"] = sum(len(s) for s in seqs)
    batch["n_response_tokens"] = sum(len(e["response_ids"]) for e in examples)
    return batch
