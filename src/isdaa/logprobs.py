"""Summed response log-probs from logits, in float32, without materializing a full float32 log-softmax.

    logp(y) = sum_t mask[b, t] * ( logits[b, t, labels[b, t]] - logsumexp_v logits[b, t, v] )

The logits arrive in the model's dtype (bf16 on GPUs); rows are processed in chunks so that at most
`chunk_rows` rows are upcast to float32 at once. Masked positions are removed with `torch.where`
(never `0 * -inf`, which is NaN), and their labels are replaced by a valid index before `gather`,
so pad ids and -100 labels are harmless.
"""

from __future__ import annotations

import warnings

import torch

from isdaa.chunked_head import (
    DEFAULT_HEAD_CHUNK_MB,
    HeadCapture,
    capturable_head,
    chunk_rows,
    chunked_token_logps,
    head_spec,
)


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    *,
    return_counts: bool = False,
    chunk_rows: int = 4,
    with_sq_logsumexp: bool = False,
):
    """Sum of log pi(labels[b, t] | logits[b, t]) over positions where `mask` is true.

    Positions are ALIGNED: `logits[b, t]` scores `labels[b, t]` (for a causal LM, pass the shifted
    views, see `causal_lm_logps`). Shapes: logits (B, T, V), labels (B, T) int, mask (B, T) bool.
    Returns (B,) float32 sums; then, `with_sq_logsumexp`, the (B,) sums over the same positions of
    log sum_v pi_v^2 = logsumexp_v(2 log pi_v) (WPO's Eq. 2 adjustment; float32, no gradient); then, when
    `return_counts`, the (B,) int64 token counts.
    """
    if logits.shape[:2] != labels.shape or labels.shape != mask.shape:
        raise ValueError(f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
                         f"mask {tuple(mask.shape)}")
    mask = mask.bool()
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels)).long()  # (B, T)
    sums, sq_sums = [], []
    for start in range(0, logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        chunk = logits[rows].float()                                    # (b, T, V) float32
        token = chunk.gather(-1, safe_labels[rows].unsqueeze(-1)).squeeze(-1)  # (b, T)
        lse = torch.logsumexp(chunk, dim=-1)                            # (b, T)
        logp = torch.where(mask[rows], token - lse, torch.zeros_like(token))
        sums.append(logp.sum(-1))
        if with_sq_logsumexp:
            with torch.no_grad():
                sq = torch.logsumexp(2 * chunk, dim=-1) - 2 * lse       # (b, T) log sum_v p_v^2
                sq_sums.append(torch.where(mask[rows], sq, torch.zeros_like(sq)).sum(-1))
    empty = logits.new_zeros(0, dtype=torch.float32)
    out = (torch.cat(sums) if sums else empty,)
    if with_sq_logsumexp:
        out += (torch.cat(sq_sums) if sq_sums else empty,)
    if return_counts:
        out += (mask.sum(-1),)
    return out if len(out) > 1 else out[0]


def causal_lm_logps(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor, **kwargs):
    """`sequence_logps` for a causal LM: token t is scored by the logits at t - 1.

    logits (B, T, V) from `model(input_ids)`, input_ids (B, T), response_mask (B, T) true on the
    response tokens (EOS included) of `input_ids`. The shifted slices are views (no copy).
    """
    return sequence_logps(logits[:, :-1], input_ids[:, 1:], response_mask[:, 1:], **kwargs)


# ---------------------------------------------------------------- response-only LM head
# The LM head is the largest matmul of a small model's step and its (B, T, V) output the largest
# activation; only the positions that predict a response token are needed: N = response tokens of the
# batch (about half of T for the usual prompt + response). The WRAPPED model's forward is called (DDP
# and FSDP gradient hooks, accelerate's autocast, peft adapters stay in the path) with `logits_to_keep`
# set to a boolean (B, T) mask: transformers >= 5 (`slice_logits_to_keep`) then projects only those
# hidden states and returns (N, V) logits, post-processing (Gemma's soft-capping, Cohere's
# logit_scale) included, since that runs inside the model's own forward after the head.
# When those (N, V) logits would exceed `head_chunk_mb` (a 128k vocabulary: ~0.5 MB per position), the
# head's input is captured in that same forward instead and the head runs in chunks of rows
# (`isdaa.chunked_head`): its memory is one chunk, at the price of recomputing each chunk's logits in the
# backward (one more head matmul); below the budget the model's own head runs whole (no recompute).


def _unwrap(model):
    seen = set()
    while id(model) not in seen:  # DDP/FSDP `.module`, compile `._orig_mod`, peft base model
        seen.add(id(model))
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
    return model


def response_head_supported(model) -> bool:
    """True when `model` (or the model inside DDP / FSDP / peft / torch.compile wrappers) takes a boolean
    (B, T) `logits_to_keep` mask: its forward has the argument and its module uses transformers'
    `slice_logits_to_keep` (older releases accepted only an int or 1-D positions)."""
    import inspect
    import sys

    model = _unwrap(model)
    try:
        params = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):
        return False
    module = sys.modules.get(type(model).__module__)
    return "logits_to_keep" in params and callable(getattr(module, "slice_logits_to_keep", None))


class _TokenLogps(torch.autograd.Function):
    """log softmax(logits[rows[m]])[labels[m]] for (N, V) logits and (M,) rows / labels, keeping the softmax p
    of the forward for the backward: d/dlogits[n] = G_n * (-p[n]) + sum_{m: rows[m] = n} g_m onehot(labels[m]),
    G_n = sum_{m: rows[m] = n} g_m, computed in place in p (no second exp, no zero-filled scatter buffer, and no
    (M, V) copy of the rows that score several tokens). Saves p (N, V) in the compute dtype, the same size
    autograd's logsumexp would save (its float32 input). Rows go through in chunks of `chunk` (the float32
    upcast of bf16 logits)."""

    @staticmethod
    def forward(ctx, logits, labels, rows, chunk):
        dtype = torch.promote_types(logits.dtype, torch.float32)
        n = logits.shape[0]
        lse = torch.empty(n, dtype=dtype, device=logits.device)           # (N,)
        p = torch.empty(logits.shape, dtype=dtype, device=logits.device)  # (N, V)
        for s in range(0, n, chunk):
            x = logits[s: s + chunk].to(dtype)                             # (c, V), may alias logits: read only
            lse[s: s + chunk] = torch.logsumexp(x, -1)
            torch.sub(x, lse[s: s + chunk, None], out=p[s: s + chunk]).exp_()
        ctx.save_for_backward(p, labels, rows)
        ctx.logits_dtype = logits.dtype
        ctx.consumed = False
        return logits[rows, labels].to(dtype) - lse[rows]                 # (M,)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        if ctx.consumed:  # p was overwritten by the first backward
            raise RuntimeError("response log-probs: backward through the fused head twice (retain_graph) "
                               "is not supported")
        ctx.consumed = True
        p, labels, rows = ctx.saved_tensors
        g = g.to(p.dtype)
        row_g = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device).index_add_(0, rows, g)  # (N,) G_n
        grad = p.mul_(-row_g[:, None])                                     # -G_n * p, in place
        grad.index_put_((rows, labels), g, accumulate=True)                # + g_m at (rows[m], labels[m])
        return grad.to(ctx.logits_dtype), None, None, None


def token_logps(logits: torch.Tensor, labels: torch.Tensor, *, rows: torch.Tensor | None = None,
                fused: bool = True, chunk: int = 1024):
    """(M,) log pi(labels[m] | logits[rows[m]]) for (N, V) logits, in float32 (float64 for float64 logits).
    `rows` (M,) defaults to 0..N-1 (M = N); a row may score several labels (a packed pair's last prompt
    position scores the first token of both responses) without being copied."""
    if rows is None:
        rows = torch.arange(logits.shape[0], device=logits.device)
    if fused and logits.requires_grad and torch.is_grad_enabled():
        return _TokenLogps.apply(logits, labels, rows, chunk)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    if logits.requires_grad:  # one piece: each slice of a graph-connected tensor costs an (N, V) zero-fill in backward
        x = logits.to(dtype)
        return x[rows, labels] - torch.logsumexp(x, -1)[rows]
    lse = torch.empty(logits.shape[0], dtype=dtype, device=logits.device)  # no graph: chunks bound the upcast
    for s in range(0, logits.shape[0], chunk):
        lse[s: s + chunk] = torch.logsumexp(logits[s: s + chunk].to(dtype), -1)
    return logits[rows, labels].to(dtype) - lse[rows]


def _kept_token_logps(model, kw: dict, keep: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None, *,
                      fused: bool, head_chunk_mb: float, with_sq: bool, temperature: float = 1.0):
    """(M,) log pi(labels[m] | kept position rows[m]) from one forward `model(**kw, logits_to_keep=keep)`, and
    the (M,) log sum_v pi_v^2 at those positions (no gradient) when `with_sq`, else None. keep (B, T) bool,
    N = keep.sum() kept positions in row-major order; rows (M,) indexes them (None: M = N, one label each).
    The head runs in chunks (`isdaa.chunked_head`) when its (N, V) float32 logits exceed `head_chunk_mb` MiB
    (0: never) and the model's head can be captured; else the model's own head gives (N, V) logits."""
    n = int(keep.sum())
    inner = _unwrap(model)
    head = capturable_head(model, inner) if head_chunk_mb > 0 else None
    if head is not None and n > chunk_rows(head.weight.shape[0], head_chunk_mb, torch.float32):
        spec = head_spec(inner.config, temperature)
        with HeadCapture(head) as cap:
            probe = model(**kw, logits_to_keep=keep).logits                # (1, V): the probe row only
        if cap.hidden is None or cap.hidden.dim() != 2 or cap.hidden.shape[0] != n:
            shape = tuple(getattr(cap.hidden, "shape", ()))
            raise ValueError(f"the model ignored logits_to_keep (LM head input {shape}); "
                             "set response_only_head: false for it")
        if cap.check(probe, spec):
            rows = torch.arange(n, device=labels.device) if rows is None else rows
            token, sq = chunked_token_logps(cap.hidden, head.weight, head.bias, labels, rows, spec=spec,
                                            compute_dtype=cap.dtype, budget_mb=head_chunk_mb, with_sq=with_sq)
            return token, (None if sq is None else sq[rows])
        cap.refuse()
        warnings.warn(f"{type(inner).__name__}: its logits are not {spec} applied to the LM head's output (a "
                      "post-processing isdaa does not know); the chunked LM head is off for this model, whose own "
                      "head now computes all (N, V) logits", stacklevel=3)
    logits = model(**kw, logits_to_keep=keep).logits                       # (N, V)
    if logits.dim() != 2 or logits.shape[0] != n:
        raise ValueError(f"the model ignored logits_to_keep (logits {tuple(logits.shape)}); set "
                         "response_only_head: false for it")
    if temperature != 1.0:
        logits = logits.float() / temperature
    sq = None
    if with_sq:
        sq = sq_logsumexp(logits)
        sq = sq if rows is None else sq[rows]
    return token_logps(logits, labels, rows=rows, fused=fused), sq


@torch.no_grad()
def sq_logsumexp(logits: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(N,) logsumexp_v(2 log p(v)) = log sum_v p(v)^2 of each row of (N, V) logits, no gradient: WPO's
    per-token normalizer (Zhou et al. 2024, Eq. 2). = logsumexp(2 z) - 2 logsumexp(z); float32 (float64 for
    float64 logits), rows in chunks of `chunk` (the float32 upcast of bf16 logits)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    out = torch.empty(logits.shape[0], dtype=dtype, device=logits.device)
    for s in range(0, logits.shape[0], chunk):
        x = logits[s: s + chunk].detach().to(dtype)                       # (c, V)
        out[s: s + chunk] = torch.logsumexp(2 * x, -1) - 2 * torch.logsumexp(x, -1)
    return out


def response_logps(model, input_ids, attention_mask, response_mask, *, response_only_head: bool = True,
                   fused: bool = True, return_counts: bool = False, with_sq_logsumexp: bool = False,
                   head_chunk_mb: float = DEFAULT_HEAD_CHUNK_MB, temperature: float = 1.0):
    """(B,) summed response log-probs (float32; float64 for a float64 model) from one forward of `model`.

    input_ids / attention_mask / response_mask (B, T) as collated (response_mask true on the response
    tokens, EOS included). With `response_only_head` (and `response_head_supported(model)`, which the
    caller checks once), the head projects only the N positions t with response_mask[b, t + 1]:
    (N, V) logits -> per-token log-probs (`token_logps`) -> summed per row with index_add; in chunks of rows
    when the (N, V) float32 logits exceed `head_chunk_mb` MiB (`_kept_token_logps`). Otherwise the full
    (B, T, V) logits go through `causal_lm_logps` (the reference path). `temperature`: log-probs of
    softmax(logits / temperature). Returns, after the (B,) log-probs, the (B,) sums of log sum_v pi_v^2 over
    the response tokens when `with_sq_logsumexp` (WPO; float32, no gradient), then the (B,) int64 response
    token counts when `return_counts`.
    """
    kw = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    target = response_mask[:, 1:].bool()                                   # (B, T-1): t predicts token t+1
    if not response_only_head:
        logits = model(**kw).logits                                        # (B, T, V)
        if temperature != 1.0:
            logits = logits.float() / temperature
        return causal_lm_logps(logits, input_ids, response_mask, return_counts=return_counts,
                               with_sq_logsumexp=with_sq_logsumexp)
    keep = torch.nn.functional.pad(target, (0, 1))                         # (B, T): the last position predicts nothing
    labels = input_ids[:, 1:][target]                                      # (N,) same row-major order
    token_lp, sq = _kept_token_logps(model, kw, keep, labels, None, fused=fused, head_chunk_mb=head_chunk_mb,
                                     with_sq=with_sq_logsumexp, temperature=temperature)  # (N,) each
    seq = target.nonzero()[:, 0]                                           # (N,) the row of each token
    out = (token_lp.new_zeros(input_ids.shape[0]).index_add(0, seq, token_lp),)  # (B,)
    if with_sq_logsumexp:
        out += (sq.float().new_zeros(input_ids.shape[0]).index_add(0, seq, sq.float()),)
    if return_counts:
        out += (target.sum(-1),)
    return out if len(out) > 1 else out[0]


# ---------------------------------------------------------------- scoring exact token ids (evaluation)


@torch.no_grad()
def score_responses(model, prompt_ids, response_ids, batch_size: int = 256, temperature: float = 1.0,
                    pad_id: int = 0, head_chunk_mb: float = DEFAULT_HEAD_CHUNK_MB):
    """(S,) float64 numpy: summed log pi(y_t | x, y_<t) over each response's tokens, from a forward of
    `model` on the exact ids (lists of token-id lists, EOS included), no gradient, training mode restored.

    Rows are sorted by length (less padding) and right-padded (positions start at 0, as in training).
    The LM head runs on response-predicting positions only, in chunks of rows beyond `head_chunk_mb`
    (`response_logps`), where the model supports it; else on the full logits.
    `temperature != 1` gives the log-probs of softmax(logits / T), i.e. of a T-sampler without top-p.
    """
    import numpy as np

    from isdaa.padding import pad_batch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    head_only = response_head_supported(model)
    out = np.zeros(len(response_ids), dtype=np.float64)
    order = np.argsort([len(p) + len(r) for p, r in zip(prompt_ids, response_ids)], kind="stable")
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start: start + batch_size]
            batch = pad_batch([list(prompt_ids[i]) + list(response_ids[i]) for i in rows], pad_id,
                              prompt_lens=[len(prompt_ids[i]) for i in rows])
            ids, attn, resp = (batch[k].to(device) for k in ("input_ids", "attention_mask", "response_mask"))
            if head_only:
                logps = response_logps(model, ids, attn, resp, temperature=temperature, head_chunk_mb=head_chunk_mb)
            else:  # any causal LM: full (B, T, V) logits, its forward called with nothing but the batch
                logits = model(input_ids=ids, attention_mask=attn).logits
                if temperature != 1.0:
                    logits = logits.float() / temperature
                logps = causal_lm_logps(logits, ids, resp, chunk_rows=16)                    # (B,)
            out[rows] = logps.double().cpu().numpy()
    finally:
        model.train(was_training)
    return out


# ---------------------------------------------------------------- shared prompt of a pair
# A preference batch holds every prompt twice (rows b and B + b: chosen and rejected). Packed, each pair is
# ONE row [prompt, chosen, rejected] of the forward: the rejected tokens attend to the prompt and to
# themselves, never to the chosen ones (a (B, 1, L, L) mask), and their positions restart after the prompt
# (position_ids), so every token sees exactly the context it has in its own sequence: the same values as the
# concatenated forward, up to float round-off. Tokens: sum_b (P_b + C_b + R_b), padded to the longest pair,
# instead of 2B * (longest prompt + response): in the lab (12-token prompts, responses of a few tokens) about
# 60% of the concatenated batch's tokens, in one forward.

# Attention implementations given the (B, 1, L, L) mask, and the dtype it is built in. Both take it additive
# (0 / finfo.min), built once: sdpa turns a boolean mask into floats in every layer and keeps each copy for the
# backward (L x L per pair and layer: at 2 x (1,024+1,024) tokens 75 MB per layer in float32), whereas a float
# mask in the dtype attention runs in (autocast's, for sdpa) is used as is by every layer and saved once.
MASK_FORMATS = {"sdpa": "attention dtype", "eager": "weight dtype"}
# Packed rows padded to a multiple of this many positions, by device: CUDA's memory-efficient sdpa kernel copies a
# mask whose rows are not 16-aligned into a padded one in every layer (and keeps each copy for the backward).
MASK_ALIGN = {"cuda": 16}


def packed_pairs_supported(model) -> bool:
    """True when `model` takes the packed pair layout: a boolean `logits_to_keep` (`response_head_supported`),
    `position_ids`, a 4D attention mask (sdpa: boolean, eager: additive) and no attention that reads the
    position in the row instead of `position_ids` (`row_index_attention`). The trainer also compares packed
    with unpacked log-probs on its first batch (train/pref.py), for families this static rule misjudges."""
    import inspect

    inner = _unwrap(model)
    cfg = getattr(inner, "config", None)
    if cfg is None or not response_head_supported(model):
        return False
    return (getattr(cfg, "_attn_implementation", None) in MASK_FORMATS and row_index_attention(cfg) is None
            and getattr(cfg, "is_causal", True) and "position_ids" in inspect.signature(type(inner).forward).parameters)


def row_index_attention(cfg) -> str | None:
    """Why a model's attention depends on a token's index in the row (which packing changes: the rejected
    response sits after the chosen one) rather than on `position_ids` or the mask alone, or None. A full
    custom 4D mask replaces sliding-window / chunked / per-layer masks; GPT-Neo's local layers slice their
    window by row index; ALiBi biases by row index."""
    layers = getattr(cfg, "layer_types", None) or getattr(cfg, "attention_layers", None) or ["full_attention"]
    attn_config = getattr(cfg, "attn_config", None)
    reasons = {
        "a sliding window": getattr(cfg, "sliding_window", None) is not None,
        "per-layer attention types": set(layers) - {"full_attention", "global"},
        "chunked attention": getattr(cfg, "attention_chunk_size", None) is not None,
        "ALiBi position biases": bool(getattr(cfg, "alibi", False)) or getattr(cfg, "model_type", "") == "bloom"
        or getattr(cfg, "position_embedding_type", None) == "alibi"
        or bool(attn_config.get("alibi") if isinstance(attn_config, dict) else getattr(attn_config, "alibi", False)),
    }
    found = [why for why, hit in reasons.items() if hit]
    return ", ".join(found) if found else None


def pair_response_logps(model, input_ids, attention_mask, response_mask, n_pairs: int, *, fused: bool = True,
                        with_sq_logsumexp: bool = False, head_chunk_mb: float = DEFAULT_HEAD_CHUNK_MB):
    """(2B,) summed response log-probs of a concatenated pair batch, each prompt through `model` once.

    input_ids / attention_mask / response_mask (2B, T) as `isdaa.data.collate_pref` makes them (right
    padded; rows [0, B) chosen, [B, 2B) rejected; rows b and B + b share the prompt). Packed row b holds
    prompt (P_b), chosen (C_b), rejected (R_b) tokens; token t is scored by the logits at t - 1, except the
    rejected response's first token, scored (like the chosen one) by the prompt's last position. Falls back to
    `response_logps` (same values) when a batch breaks the layout (prompts of a pair differ, an empty
    prompt or response, left padding). The caller checks `packed_pairs_supported(model)` once.
    `with_sq_logsumexp` / `head_chunk_mb`: as in `response_logps` ((2B,) logps, (2B,) sq sums)."""
    n, (rows, width), dev = n_pairs, input_ids.shape, input_ids.device
    resp = response_mask.bool()                                            # (2B, T)
    plen, rlen = resp.int().argmax(-1), resp.sum(-1)                       # (2B,) prompt / response tokens
    prompt = torch.arange(width, device=dev)[None, :] < plen[:, None]      # (2B, T)
    layout_ok = (rows == 2 * n and bool((plen[:n] == plen[n:]).all()) and int(plen.min()) > 0
                 and int(rlen.min()) > 0 and bool(((input_ids[:n] == input_ids[n:]) | ~prompt[:n]).all())
                 and bool((attention_mask.bool() == (prompt | resp)).all()))
    if not layout_ok:
        return response_logps(model, input_ids, attention_mask, response_mask, fused=fused,
                              with_sq_logsumexp=with_sq_logsumexp, head_chunk_mb=head_chunk_mb)
    p, c, r = plen[:n, None], rlen[:n, None], rlen[n:, None]               # (B, 1) each
    align = MASK_ALIGN.get(dev.type, 1)
    k = torch.arange(-(-int((p + c + r).max()) // align) * align, device=dev)[None, :]  # (1, L) packed positions
    in_chosen_row, real = k < p + c, k < p + c + r                         # (B, L)
    src = torch.where(in_chosen_row, k, k - c).clamp(0, width - 1)         # column in the source row
    ids = torch.where(in_chosen_row, input_ids[:n].gather(1, src), input_ids[n:].gather(1, src))  # (B, L)
    pos = torch.where(real, torch.where(in_chosen_row, k, k - c), 0)      # rejected restarts at P_b
    seg = torch.where(k < p, 0, torch.where(in_chosen_row, 1, torch.where(real, 2, 3)))  # prompt/chosen/rejected/pad
    causal = (k[0, :, None] >= k[0, None, :])[None]                        # (1, L, L)
    mask = (causal & ~((seg[:, :, None] == 2) & (seg[:, None, :] == 1)))[:, None]  # (B, 1, L, L) query x key
    inner = _unwrap(model)
    dtype = inner.get_input_embeddings().weight.dtype                     # eager: the weights dtype, as its scores
    if MASK_FORMATS[inner.config._attn_implementation] == "attention dtype" and torch.is_autocast_enabled(dev.type):
        dtype = torch.get_autocast_dtype(dev.type)                         # sdpa under autocast: no cast per layer
    mask = torch.zeros(mask.shape, dtype=dtype, device=dev).masked_fill_(~mask, torch.finfo(dtype).min)
    # positions whose logits are needed: p-1 .. p+c-2 (chosen tokens) and p+c .. p+c+r-2 (rejected after the first)
    keep = (k >= p - 1) & real & (k != p + c - 1) & (k != p + c + r - 1)   # (B, L)
    index = (keep.flatten().cumsum(0) - 1).view(keep.shape)               # (B, L) row of the kept logits per position
    scored = (k >= p) & real                                               # (B, L) every response token
    pred = torch.where(k == p + c, p - 1, k - 1).clamp(min=0)              # the position that scores it
    b, t = scored.nonzero(as_tuple=True)                                   # (M,) each
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    token_lp, sq = _kept_token_logps(model, kw, keep, ids[b, t], index[b, pred[b, t]], fused=fused,
                                     head_chunk_mb=head_chunk_mb, with_sq=with_sq_logsumexp)  # (M,) each
    out_row = torch.where(in_chosen_row, 0, n)[b, t] + b                   # chosen -> b, rejected -> B + b
    logps = token_lp.new_zeros(rows).index_add(0, out_row, token_lp)      # (2B,)
    if with_sq_logsumexp:
        return logps, sq.float().new_zeros(rows).index_add(0, out_row, sq.float())
    return logps
