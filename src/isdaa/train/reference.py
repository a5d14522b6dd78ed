"""Reference log-probs: one pass over the data before training (default), cached on disk under a
hash of exactly what determines them: the reference model's identity (name or path, revision,
weight files' sizes and mtimes, dtype), the mixed precision, and the token ids of every pair (which
covers the data, the chat template and the truncation settings). Training then holds one model.
The pass runs without autograd state, in batches by length under a token budget (little padding, large
batches of short pairs), through the chunked LM head, and prints its throughput.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from array import array
from pathlib import Path

import torch

from isdaa.chunked_head import DEFAULT_HEAD_CHUNK_MB
from isdaa.data import collate_pref
from isdaa.io import atomic_path
from isdaa.logprobs import response_head_supported, response_logps


def default_cache_dir() -> Path:
    return Path(os.environ.get("ISDAA_CACHE", Path.home() / ".cache" / "isdaa")) / "ref_logps"


def _model_fingerprint(name_or_path: str) -> list:
    path = Path(name_or_path)
    if not path.is_dir():
        return [name_or_path]
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return [str(path.resolve())] + [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def cache_key(ref_path: str, mcfg, mixed_precision: str, examples: list[dict]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"model": _model_fingerprint(ref_path), "revision": mcfg.revision, "dtype": mcfg.dtype,
                         "mixed_precision": mixed_precision, "n": len(examples)}, default=str).encode())
    for e in examples:
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            h.update(array("q", e[key]).tobytes())
            h.update(b"|")
    return h.hexdigest()[:32]


def _row_width(e: dict) -> int:
    """Tokens of a pair's longer row in a concatenated batch (prompt + the longer response)."""
    return len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"]))


def length_batches(examples: list[dict], max_tokens: int) -> list[list[int]]:
    """Indices of `examples` in batches by length: sorted by the padded row of a pair (prompt + the longer
    response; a batch holds 2 rows per pair, as `collate_pref` pads them), then cut so that each batch's
    2 x pairs x longest row <= `max_tokens` (a longer pair goes alone). Short pairs go in large batches,
    long ones in small, with little padding in either."""
    width = [_row_width(e) for e in examples]
    batches, current = [], []
    for i in sorted(range(len(examples)), key=width.__getitem__):  # stable: ties keep the data order
        if current and 2 * (len(current) + 1) * width[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


@torch.no_grad()
def compute(model, examples: list[dict], accelerator, batch_size: int, pad_id: int, response_only_head: bool = True,
            *, max_tokens: int | None = None, head_chunk_mb: float = DEFAULT_HEAD_CHUNK_MB, report: bool = False):
    """(chosen, rejected) (N,) float32 summed log-probs of `model` (`isdaa.logprobs.response_logps`: the
    response-only head, in chunks of rows beyond `head_chunk_mb`), without autograd state.

    Batches by length (`length_batches`) of at most `max_tokens` padded tokens; default: `batch_size` pairs of
    the longest pair (what the caller's batch size costs at worst), so shorter pairs go in larger batches at no
    more memory. The batches are dealt round-robin to the processes; every process runs the same number of
    forwards (FSDP / ZeRO-3 forwards are collective: one with fewer repeats its last batch and discards it),
    and each value is written by exactly one process, so a sum over processes gathers them. `report`: print
    the pass's throughput (pairs/s, tokens/s) where its progress bar shows (main process, `progress` on)."""
    world, rank, n = accelerator.num_processes, accelerator.process_index, len(examples)
    max_tokens = max_tokens or 2 * batch_size * max(map(_row_width, examples), default=1)
    batches = length_batches(examples, max_tokens)
    mine = batches[rank::world]
    rounds = -(-len(batches) // world)
    was_training = model.training
    model.eval()
    head_only = response_only_head and response_head_supported(model)
    out = torch.zeros(n, 2, device=accelerator.device)                   # (N, 2): chosen, rejected
    bar = _progress(sum(map(len, mine)), accelerator)
    shown = not bar.disable                                              # (close() disables it)
    start = time.perf_counter()
    for k in range(rounds):
        idx = mine[min(k, len(mine) - 1)] if mine else batches[0]        # past its share: a repeat, discarded
        batch = collate_pref([examples[i] for i in idx], pad_id)
        ids, attn, resp = (batch[key].to(accelerator.device)
                           for key in ("input_ids", "attention_mask", "response_mask"))
        with accelerator.autocast():
            logps = response_logps(model, ids, attn, resp, response_only_head=head_only, head_chunk_mb=head_chunk_mb)
        if k < len(mine):
            out[torch.tensor(idx, device=out.device)] = logps.float().view(2, -1).T  # (b, 2)
            bar.update(len(idx))
    bar.close()
    model.train(was_training)
    if world > 1:
        out = accelerator.reduce(out, reduction="sum")                   # one writer per pair: the sum is exact
    seconds = time.perf_counter() - start
    if report and shown and n:  # the main process of a run with progress on, as the bar
        tokens = sum(2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples)
        padded = sum(2 * len(b) * max(_row_width(examples[i]) for i in b) for b in batches)
        print(f"reference log-probs: {n:,} pairs ({tokens:,} tokens) in {seconds:.1f} s: {n / seconds:,.1f} pairs/s, "
              f"{tokens / seconds:,.0f} tokens/s ({len(batches)} batches by length of <= {max_tokens:,} tokens, "
              f"{1 - tokens / padded:.0%} padding, {world} process{'es' if world > 1 else ''})", flush=True)
    out = out.cpu()
    return out[:, 0].contiguous(), out[:, 1].contiguous()


def _progress(total: int, accelerator):
    """A tqdm bar on the main process; off when the run has `progress: false` (the loop then turns
    transformers' bars off, which is what is read here)."""
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    on = accelerator.is_main_process and hf_logging.is_progress_bar_enabled()
    return tqdm(total=total, desc="reference log-probs", unit="pair", disable=not on, leave=False)


def _digest(chosen: torch.Tensor, rejected: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (chosen, rejected):
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def read_cache(path: Path, n: int):
    """(chosen, rejected) from a cache file, or None with the reason when the entry is unusable:
    unreadable (truncated, not a weights_only torch file), wrong length, a sha256 mismatch (bits
    altered) or non-finite values."""
    try:
        data = torch.load(path, weights_only=True)
        chosen, rejected = data["ref_chosen_logps"], data["ref_rejected_logps"]
        digest = data["sha256"]
    except Exception as err:  # noqa: BLE001 -- any unreadable entry is rebuilt
        return None, f"unreadable ({type(err).__name__})"
    if chosen.shape != (n,) or rejected.shape != (n,):
        return None, f"holds {tuple(chosen.shape)} values for {n} pairs"
    if _digest(chosen, rejected) != digest:
        return None, "sha256 mismatch"
    if not (torch.isfinite(chosen).all() and torch.isfinite(rejected).all()):
        return None, "non-finite values"
    return (chosen, rejected), None


def load_or_compute(model, examples, accelerator, batch_size, pad_id, key: str, cache_dir: Path,
                    response_only_head: bool = True, *, max_tokens: int | None = None,
                    head_chunk_mb: float = DEFAULT_HEAD_CHUNK_MB):
    """Cached (chosen, rejected) reference log-probs, or one pass of `model` (`compute`, its throughput
    printed; then cached). A corrupt cache entry is detected (read_cache), reported, and rebuilt."""
    path = Path(cache_dir) / f"{key}.pt"
    if path.exists():
        cached, why = read_cache(path, len(examples))
        if cached is not None:
            return cached[0], cached[1], True
        if accelerator.is_main_process:
            print(f"reference log-prob cache {path} is corrupt ({why}); recomputing it")
    chosen, rejected = compute(model, examples, accelerator, batch_size, pad_id, response_only_head,
                               max_tokens=max_tokens, head_chunk_mb=head_chunk_mb, report=True)
    if not (torch.isfinite(chosen).all() and torch.isfinite(rejected).all()):
        bad = [examples[i].get("row", i) for i in
               torch.nonzero(~(torch.isfinite(chosen) & torch.isfinite(rejected))).flatten().tolist()[:5]]
        raise ValueError(f"the reference model gives non-finite log-probs for rows {bad}")
    if accelerator.is_main_process:
        with atomic_path(path) as tmp:
            torch.save({"ref_chosen_logps": chosen, "ref_rejected_logps": rejected,
                        "sha256": _digest(chosen, rejected)}, tmp)
    accelerator.wait_for_everyone()
    return chosen, rejected, False


# ---------------------------------------------------------------- the start-of-training check

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
BEHAVIOR_COLUMNS = ("chosen_logps", "rejected_logps")
# |stored - recomputed| <= ATOL + RTOL * |stored| (summed log-probs); in full fp32 round-off is ~1e-5,
# under bf16/fp16 a fraction of a nat on long responses. A truncation, a template or EOS difference or
# active dropout moves a sequence's log-prob by whole nats.
TOLERANCE = {"fp32": (1e-3, 1e-4), "low": (0.05, 2e-2)}


def sampled_by(example: dict, policy: str) -> bool:
    """Does the row declare `policy` (at temperature 1) as its sampler pi_b? (`behavior_model` /
    `behavior_temperature`, written by `isdaa label`.)"""
    name = example.get("behavior_model")
    if not isinstance(name, str) or example.get("behavior_temperature", 1.0) != 1.0:
        return False
    a, b = Path(name), Path(policy)
    return a.resolve() == b.resolve() if a.is_dir() and b.is_dir() else name == policy


def behavior_is_initial(example: dict, policy: str) -> bool:
    """Is the row's pi_b expected to be the initial policy `policy`? Yes when the row declares it as its
    sampler, and when it declares no sampler at all (no `behavior_model`, temperature 1): behavior columns
    without a declaration are taken to be the initial policy's (the paper's pi_data = pi_ref = SFT model);
    a row sampled by another policy says so in `behavior_model`."""
    undeclared = example.get("behavior_model") is None and example.get("behavior_temperature", 1.0) == 1.0
    return undeclared or sampled_by(example, policy)


def _check_sample(examples: list[dict], n: int, seed: int) -> list[int]:
    """Up to n indices: truncated pairs first (the likely culprits), then a seeded random sample."""
    trunc = [i for i, e in enumerate(examples) if e.get("chosen_truncated") or e.get("rejected_truncated")]
    seen = set(trunc)
    rest = [i for i in range(len(examples)) if i not in seen]
    rng = random.Random(seed)
    picked = rng.sample(trunc, min(len(trunc), n // 2 or 1))
    return sorted(picked + rng.sample(rest, min(len(rest), n - len(picked))))


def tolerance(accelerator, model) -> tuple[float, float]:
    """(atol, rtol) for comparing summed log-probs computed under this run's precision (TOLERANCE)."""
    dtype = next(accelerator.unwrap_model(model).parameters()).dtype
    full = accelerator.mixed_precision == "no" and dtype in (torch.float32, torch.float64)
    return TOLERANCE["fp32" if full else "low"]


def mismatches(examples: list[dict], chosen, rejected, cols: tuple[str, str], who: str, tol) -> list[str]:
    """One line per stored value of `cols` that differs from the recomputed (chosen, rejected) by more
    than atol + rtol * |stored|."""
    atol, rtol = tol
    bad = []
    for e, got in zip(examples, zip(chosen.tolist(), rejected.tolist())):
        for col, g in zip(cols, got):
            if abs(e[col] - g) > atol + rtol * abs(e[col]):
                bad.append(f"{e.get('row', '?')}: {col} stored {e[col]:.4f}, {who.split(' (')[0]} gives {g:.4f}")
    return bad


BEHAVIOR_HINT = (" Behavior columns (chosen_logps / rejected_logps) of rows that declare no sampler are taken to "
                 "be the initial policy's; if another policy sampled these pairs, name it in a `behavior_model` "
                 "column (then they are used as given). Summed log-probs are expected, not per-token means, in "
                 "nats (natural log).")


def mismatch_message(bad: list[str], sample: list[dict], cols, who: str, tol, data=None, hint: str = "") -> str:
    atol, rtol = tol
    n_trunc = sum(bool(e.get("chosen_truncated") or e.get("rejected_truncated")) for e in sample)
    lengths = f"data.max_length={data.max_length}, data.max_prompt_length={data.max_prompt_length}" if data else ""
    return (f"stored {cols[0]} / {cols[1]} do not match the {who} on the trainer's token ids: {len(bad)} value(s) "
            f"in the {len(sample)} rows checked differ by more than {atol:g} + {rtol:g} * |logp|:\n  "
            + "\n  ".join(bad[:5]) + ("\n  ..." if len(bad) > 5 else "") +
            f"\nLikely causes: the log-probs were computed on other token ids -- truncation ({n_trunc} of the "
            f"checked rows are cut by {lengths}; label with the same lengths: `isdaa label --max-length "
            "--max-prompt-length`), another chat template or special tokens (BOS, EOS after the end of turn) -- "
            "with dropout active, or by another model." + hint + " Set check_logps=recompute to recompute them "
            f"with the {who.split(' (')[0]}, or check_logps=off to use them as given.")


def check_stored(model, examples: list[dict], cols: tuple[str, str], who: str, accelerator, batch_size: int,
                 pad_id: int, n_rows: int = 32, seed: int = 0, data=None, response_only_head: bool = True,
                 hint: str = "") -> str | None:
    """Recompute `cols` (chosen, rejected summed log-probs) with `model` on the trainer's ids for a
    sample of `n_rows` examples; None when they match (TOLERANCE), else the error message naming the
    rows, the likely cause and the way out (+ `hint`)."""
    idx = _check_sample(examples, n_rows, seed)
    sample = [examples[i] for i in idx]
    chosen, rejected = compute(model, sample, accelerator, batch_size, pad_id, response_only_head)
    tol = tolerance(accelerator, model)
    bad = mismatches(sample, chosen, rejected, cols, who, tol)
    return mismatch_message(bad, sample, cols, who, tol, data, hint) if bad else None
