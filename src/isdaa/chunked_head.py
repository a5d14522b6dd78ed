"""The LM head in chunks of rows: hidden states (N, H) -> (c, V) logits -> float32 log-softmax -> the token
log-probs, forward and backward, never holding all (N, V) logits.

At a 128k vocabulary the head's logits are most of a small model's memory: 4 pairs x 512 response positions x
128,256 x 4 B = 1 GB, and autograd keeps them (or their softmax) until the backward. Here the forward keeps
only each row's logsumexp (N,); the backward recomputes each chunk's logits from the saved hidden states and
the head weight (one more (c, H) x (H, V) matmul per chunk) and turns them into the gradients of the hidden
states, the head weight (tied or not) and its bias in place. Rows per chunk come from a memory budget.

The hidden states come from the WRAPPED model's own forward (DDP / FSDP hooks, accelerate's autocast, peft
adapters stay in the path): `HeadCapture` hooks the output-embedding module so that it records its (N, H)
input and projects only the first row. That row's logits, as the model post-processes them, check on every
call that `HeadSpec` (the family's final-logit scale and soft-capping, read from the config) reproduces the
model: a model whose post-processing it does not know is refused (`refused`) and the caller falls back to
the model's own head.
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

DEFAULT_HEAD_CHUNK_MB = 256.0  # logits and their float32 work buffers of one chunk of rows


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """What the model does to `lm_head(h)`: z = softcap * tanh(scale * x / softcap) (no tanh without softcap),
    then z / temperature (scoring a tempered sampler)."""

    scale: float = 1.0             # Cohere `logit_scale`, Granite 1 / `logits_scaling`, Falcon-H1 `lm_head_multiplier`
    softcap: float | None = None   # Gemma 2/3 `final_logit_softcapping`
    temperature: float = 1.0

    @property
    def linear(self) -> bool:
        return self.softcap is None

    @property
    def slope(self) -> float:
        """dz/dx without soft-capping."""
        return self.scale / self.temperature


def head_spec(config, temperature: float = 1.0) -> HeadSpec:
    """The final-logit post-processing a transformers config declares (the families listed in HeadSpec).
    `HeadCapture.check` verifies it against the model on every call."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = next((v for v in (getattr(cfg, k, None) for k in ("logit_scale", "output_multiplier",
                                                                 "lm_head_multiplier")) if v is not None), None)
    if scale is None and getattr(cfg, "logits_scaling", None) is not None:
        scale = cfg.logits_scaling if getattr(cfg, "model_type", "") == "hyperclovax" else 1 / cfg.logits_scaling
    return HeadSpec(1.0 if scale is None else float(scale), getattr(cfg, "final_logit_softcapping", None) or None,
                    temperature)


def _transform(x: torch.Tensor, spec: HeadSpec, deriv: bool = False):
    """z = spec(x) in place on `x` (floating, the output dtype); with `deriv`, also dz/dx: a tensor under
    soft-capping, else the float slope."""
    if spec.linear:
        if spec.slope != 1.0:
            x.mul_(spec.slope)
        return (x, spec.slope) if deriv else x
    x.mul_(spec.scale / spec.softcap).tanh_()                             # t = tanh(scale x / c)
    d = torch.mul(x, x).neg_().add_(1).mul_(spec.scale / spec.temperature) if deriv else None  # scale/T (1 - t^2)
    x.mul_(spec.softcap / spec.temperature)
    return (x, d) if deriv else x


def _logits(h: torch.Tensor, weight: torch.Tensor, bias, out_dtype, spec: HeadSpec, deriv: bool = False):
    """spec(h @ weight.T + bias) for a chunk of rows: (c, V) in `out_dtype` (the matmul in weight's dtype)."""
    x = torch.mm(h.to(weight.dtype), weight.t()) if bias is None else torch.addmm(bias, h.to(weight.dtype), weight.t())
    return _transform(x.to(out_dtype), spec, deriv)                       # .to: no copy when the dtypes agree


def chunk_rows(vocab: int, budget_mb: float, compute_dtype: torch.dtype, softcap: bool = False) -> int:
    """Rows per chunk: the chunk's logits (compute dtype), their float32 copy and, soft-capped, dz/dx in
    `budget_mb` MiB."""
    out = torch.promote_types(compute_dtype, torch.float32).itemsize
    per_row = vocab * (compute_dtype.itemsize + out * (2 if softcap else 1))
    return max(1, int(budget_mb * 2**20 // per_row))


def _plan(rows: torch.Tensor, n: int, chunk: int):
    """The labels each chunk scores: `order` sorts them by row, chunk k's are order[bounds[k]:bounds[k + 1]]."""
    order = torch.argsort(rows, stable=True)
    starts = torch.arange(0, n, chunk, device=rows.device)
    bounds = torch.searchsorted(rows[order], starts).tolist() + [rows.shape[0]]
    return order, bounds


def _forward(hidden, weight, bias, labels, rows, spec, compute_dtype, chunk, with_sq, expect=False):
    """(M,) token log-probs, (N,) logsumexp, (N,) log sum_v p_v^2 (or None) and, with `expect` (a frozen head:
    no recompute in the backward), the (N, H) rows E_p[dz/dx W] = (p * dz/dx) @ W and the (M,) dz/dx at the
    labels (else None), chunk by chunk."""
    out_dtype = torch.promote_types(compute_dtype, torch.float32)
    n = hidden.shape[0]
    w, b = weight.to(compute_dtype), None if bias is None else bias.to(compute_dtype)
    lse = hidden.new_empty(n, dtype=out_dtype)
    token = hidden.new_empty(labels.shape[0], dtype=out_dtype)
    sq = hidden.new_empty(n, dtype=out_dtype) if with_sq else None
    mean_w = hidden.new_empty(n, w.shape[1], dtype=out_dtype) if expect else None
    label_slope = hidden.new_ones(labels.shape[0], dtype=out_dtype) if expect else None
    order, bounds = _plan(rows, n, chunk)
    for k, s in enumerate(range(0, n, chunk)):
        z, slope = _logits(hidden[s: s + chunk], w, b, out_dtype, spec, deriv=True) if expect else \
            (_logits(hidden[s: s + chunk], w, b, out_dtype, spec), None)  # (c, V), dz/dx
        lse[s: s + chunk] = torch.logsumexp(z, -1)
        m = order[bounds[k]: bounds[k + 1]]                               # labels scored by this chunk's rows
        token[m] = z[rows[m] - s, labels[m]] - lse[rows[m]]
        if with_sq:  # WPO: log sum_v p_v^2 = logsumexp(2 z) - 2 lse (z is still needed with `expect`)
            sq[s: s + chunk] = torch.logsumexp(z.mul(2) if expect else z.mul_(2), -1) - 2 * lse[s: s + chunk]
        if expect:
            p = z.sub_(lse[s: s + chunk, None]).exp_()                    # (c, V) softmax, in place
            if isinstance(slope, torch.Tensor):                           # soft-capped: dz/dx per logit
                label_slope[m] = slope[rows[m] - s, labels[m]]
                p.mul_(slope)
            elif slope != 1.0:
                label_slope[m] = slope
                p.mul_(slope)
            mean_w[s: s + chunk] = p.to(compute_dtype) @ w                # (c, H)
    return token, lse, sq, (order, bounds), mean_w, label_slope


class _ChunkedHead(torch.autograd.Function):
    """token log-probs of labels[m] under spec(hidden[rows[m]] @ weight.T + bias); saves hidden, the weight
    (a reference, not a copy) and the (N,) logsumexp. Backward per chunk: p = exp(z - lse),
    dz = -G_n p + sum_{m: rows[m] = n} g_m onehot(labels[m]) with G_n = sum_{m: rows[m] = n} g_m,
    dx = dz * dz/dx, then dhidden = dx @ W, dW += dx^T @ hidden, db += sum_rows dx.
    A frozen head (only hidden needs a gradient: LoRA elsewhere, a reference) is not recomputed: the forward
    keeps a_n = (p_n * dz/dx) @ W (N, H), and dhidden_n = sum_{m: rows[m] = n} g_m dz/dx W[labels[m]] - G_n a_n."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, rows, spec, compute_dtype, chunk, with_sq):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        expect = need_h and not need_w and not need_b
        with torch.autocast(hidden.device.type, enabled=False):          # dtypes are chosen here, by hand
            token, lse, sq, plan, mean_w, label_slope = _forward(hidden, weight, bias, labels, rows, spec,
                                                                 compute_dtype, chunk, with_sq, expect)
        if expect:
            ctx.save_for_backward(hidden, weight, labels, rows, mean_w, label_slope)
        else:
            ctx.save_for_backward(hidden, weight, bias, labels, rows, lse)
        ctx.expect, ctx.plan, ctx.spec, ctx.compute_dtype, ctx.chunk = expect, plan, spec, compute_dtype, chunk
        sq = token.new_zeros(0) if sq is None else sq
        ctx.mark_non_differentiable(sq)
        return token, sq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g, _):
        if ctx.expect:
            hidden, weight, labels, rows, mean_w, label_slope = ctx.saved_tensors
            g = g.to(mean_w.dtype)
            row_g = torch.zeros(hidden.shape[0], dtype=g.dtype, device=g.device).index_add_(0, rows, g)  # G_n
            grad_h = mean_w.mul_(-row_g[:, None]).index_add_(
                0, rows, (g * label_slope)[:, None] * weight[labels].to(ctx.compute_dtype).to(g.dtype))
            return (grad_h.to(hidden.dtype),) + (None,) * 8
        hidden, weight, bias, labels, rows, lse = ctx.saved_tensors
        (order, bounds), spec, cd, chunk = ctx.plan, ctx.spec, ctx.compute_dtype, ctx.chunk
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, out_dtype = hidden.shape[0], lse.dtype
        g = g.to(out_dtype)
        row_g = torch.zeros(n, dtype=out_dtype, device=g.device).index_add_(0, rows, g)  # (N,) G_n
        w, b = weight.to(cd), None if bias is None else bias.to(cd)
        acc = torch.promote_types(weight.dtype, torch.float32)            # weight gradient summed over chunks
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        with torch.autocast(hidden.device.type, enabled=False):
            for k, s in enumerate(range(0, n, chunk)):
                h = hidden[s: s + chunk].to(cd)                           # (c, H)
                z, slope = _logits(h, w, b, out_dtype, spec, deriv=True)  # (c, V), dz/dx
                dz = z.sub_(lse[s: s + chunk, None]).exp_().mul_(-row_g[s: s + chunk, None])  # -G_n p, in place
                m = order[bounds[k]: bounds[k + 1]]
                dz.index_put_((rows[m] - s, labels[m]), g[m], accumulate=True)
                dx = (dz.mul_(slope) if isinstance(slope, torch.Tensor) or slope != 1.0 else dz).to(cd)
                if need_h:
                    grad_h[s: s + chunk] = dx @ w
                if need_w:
                    grad_w.add_(dx.t() @ h) if cd != acc else grad_w.addmm_(dx.t(), h)
                if need_b:
                    grad_b.add_(dx.sum(0, dtype=acc))
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None, None)


def chunked_token_logps(hidden, weight, bias, labels, rows, *, spec: HeadSpec = HeadSpec(),
                        compute_dtype: torch.dtype | None = None, budget_mb: float = DEFAULT_HEAD_CHUNK_MB,
                        with_sq: bool = False):
    """(M,) log p(labels[m] | row rows[m]) and, `with_sq`, the (N,) per-row log sum_v p_v^2 (no gradient; else
    None), for p = softmax(spec(hidden @ weight.T + bias)): hidden (N, H), weight (V, H), bias (V,) or None,
    labels / rows (M,) int64. The matmuls run in `compute_dtype` (default: weight's; the autocast dtype under
    autocast), the log-softmax in float32 (float64 for float64). A graph is kept only when something needs a
    gradient."""
    cd = compute_dtype or weight.dtype
    chunk = chunk_rows(weight.shape[0], budget_mb, cd, not spec.linear)
    rows, labels = rows.long(), labels.long()
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        token, sq = _ChunkedHead.apply(hidden, weight, bias, labels, rows, spec, cd, chunk, with_sq)
        return token, (sq if with_sq else None)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        token, _, sq, _, _, _ = _forward(hidden, weight, bias, labels, rows, spec, cd, chunk, with_sq)
    return token, sq


# ---------------------------------------------------------------- the hidden states from the model's own forward

_REFUSED: weakref.WeakSet = weakref.WeakSet()  # head modules whose model post-processes logits unlike HeadSpec


def _is_sharded(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor" or hasattr(t, "ds_id") or t.device.type == "meta"


def capturable_head(model, inner):
    """The output-embedding module when the chunked head can replace it: a plain `nn.Linear` (not a peft
    LoRA / modules_to_save wrapper, not quantized) whose weight is whole on this process (not FSDP / ZeRO-3
    sharded, not offloaded), and not refused before. Else None (the caller uses the model's own head)."""
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head in _REFUSED or _is_sharded(head.weight):
        return None
    if head.bias is not None and _is_sharded(head.bias):
        return None
    seen, m = set(), model
    while id(m) not in seen:  # no FSDP / DeepSpeed wrapper anywhere between the caller and the model
        seen.add(id(m))
        if any(k in type(m).__name__ for k in ("FullyShardedDataParallel", "DeepSpeed")):
            return None
        m = getattr(m, "module", m)
    return head


class HeadCapture:
    """Inside `with HeadCapture(head):` a call of `head` records its (N, H) input (`hidden`) and the dtype its
    matmul runs in (autocast's, if on), and projects only the first row (`raw`: (1, V) or (0, V))."""

    def __init__(self, head: torch.nn.Linear):
        self.head, self.calls, self.hidden, self.raw, self.dtype = head, 0, None, None, None

    def __enter__(self):
        self._handles = [self.head.register_forward_pre_hook(self._pre), self.head.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()

    def _pre(self, module, args):
        self.calls += 1
        (h,) = args
        dev = h.device.type
        self.hidden = h
        self.dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else module.weight.dtype
        return (h[:1],) if h.dim() == 2 else None  # a 3D input: the model ignored logits_to_keep (caller raises)

    def _post(self, module, args, out):
        self.raw = out

    def check(self, final: torch.Tensor, spec: HeadSpec) -> bool:
        """Does spec(raw) equal the model's own post-processed logits of the probe row, to a few ulps of their
        dtype? (An unknown scale or cap changes them by far more.)"""
        if self.calls != 1 or self.raw is None or final.shape != self.raw.shape:
            return False
        if final.shape[0] == 0:
            return True
        work = torch.promote_types(final.dtype, torch.float32)
        ours = _transform(self.raw.detach().to(work).clone(), dataclasses.replace(spec, temperature=1.0))
        theirs = final.detach().to(work)
        eps = max(torch.finfo(final.dtype).eps, torch.finfo(self.raw.dtype).eps)  # the coarser of the two
        tol = 8 * eps * (1 + theirs.abs())
        return bool(((ours - theirs).abs() <= tol).all())

    def refuse(self) -> None:
        _REFUSED.add(self.head)
