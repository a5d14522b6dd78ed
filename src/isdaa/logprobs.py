"""Summed response log-probs from logits, in float32, without materializing a full float32 log-softmax.

    logp(y) = sum_t mask[b, t] * ( logits[b, t, labels[b, t]] - logsumexp_v logits[b, t, v] )

The logits arrive in the model's dtype (bf16 on GPUs); rows are processed in chunks so that at most
`chunk_rows` rows are upcast to float32 at once. Masked positions are removed with `torch.where`
(never `0 * -inf`, which is NaN), and their labels are replaced by a valid index before `gather`,
so pad ids and -100 labels are harmless.
"""

from __future__ import annotations

import torch


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    *,
    return_counts: bool = False,
    chunk_rows: int = 4,
):
    """Sum of log pi(labels[b, t] | logits[b, t]) over positions where `mask` is true.

    Positions are ALIGNED: `logits[b, t]` scores `labels[b, t]` (for a causal LM, pass the shifted
    views, see `causal_lm_logps`). Shapes: logits (B, T, V), labels (B, T) int, mask (B, T) bool.
    Returns (B,) float32 sums, and (B,) int64 token counts when `return_counts`.
    """
    if logits.shape[:2] != labels.shape or labels.shape != mask.shape:
        raise ValueError(f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
                         f"mask {tuple(mask.shape)}")
    mask = mask.bool()
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels)).long()  # (B, T)
    sums = []
    for start in range(0, logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        chunk = logits[rows].float()                                    # (b, T, V) float32
        token = chunk.gather(-1, safe_labels[rows].unsqueeze(-1)).squeeze(-1)  # (b, T)
        logp = token - torch.logsumexp(chunk, dim=-1)                   # (b, T)
        logp = torch.where(mask[rows], logp, torch.zeros_like(logp))
        sums.append(logp.sum(-1))
    out = torch.cat(sums) if sums else logits.new_zeros(0, dtype=torch.float32)
    if return_counts:
        return out, mask.sum(-1)
    return out


def causal_lm_logps(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor, **kwargs):
    """`sequence_logps` for a causal LM: token t is scored by the logits at t - 1.

    logits (B, T, V) from `model(input_ids)`, input_ids (B, T), response_mask (B, T) true on the
    response tokens (EOS included) of `input_ids`. The shifted slices are views (no copy).
    """
    return sequence_logps(logits[:, :-1], input_ids[:, 1:], response_mask[:, 1:], **kwargs)
