"""Padding token-id lists into a batch: the one helper behind collation (right padding, training and
scoring) and generation (left padding, so that every prompt ends at the last column)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int, *, side: str = "right",
    prompt_lens: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """input_ids (N, T) long and attention_mask (N, T) long, T the longest sequence of THIS batch;
    with `prompt_lens`, also response_mask (N, T) bool: true on each row's tokens after its first
    prompt_lens[i] (the response, EOS included). `side`: "right" (positions start at 0 for every row,
    as in training) or "left" (generation)."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)     # (N,)
    width = int(lengths.max()) if len(seqs) else 0
    fill = [[pad_id] * (width - len(s)) for s in seqs]
    rows = [list(s) + f for s, f in zip(seqs, fill)] if side == "right" else [f + list(s) for s, f in zip(seqs, fill)]
    ids = torch.tensor(rows, dtype=torch.long).reshape(len(seqs), width)
    pos = torch.arange(width)
    start = torch.zeros_like(lengths) if side == "right" else width - lengths  # (N,) first real token
    attn = (pos >= start[:, None]) & (pos < (start + lengths)[:, None])    # (N, T)
    batch = {"input_ids": ids, "attention_mask": attn.long()}
    if prompt_lens is not None:
        batch["response_mask"] = attn & (pos >= (start + torch.tensor(prompt_lens, dtype=torch.long))[:, None])
    return batch
