"""Data: load rows (hub name / .jsonl / .json / .parquet), bring every format to (prompt, response)
text, tokenize ONCE with the documented rule, and collate padded batches.

Formats (as TRL has them):
- standard: `prompt`, `chosen`, `rejected` strings;
- conversational: the same keys holding lists of `{role, content}` messages, rendered with the
  tokenizer's chat template (prompt with the generation prompt; a response is the rest of the
  rendered full conversation);
- implicit prompt: `chosen` / `rejected` full texts or conversations sharing a prefix, which becomes
  the prompt (strings are cut back to a whitespace boundary so no word is split).
SFT rows: `prompt` + `completion`, `messages` (the last message is the response), or the chosen side
of preference rows (the paper's HH recipe).

Tokenization rule (ARCHITECTURE.md): prompt_ids = tokenizer(prompt) with the tokenizer's special
tokens (skipped when the rendered chat text already starts with BOS); response_ids =
tokenizer(response, add_special_tokens=False) + [eos]. The prompt keeps its LAST max_prompt_length
tokens, then the response its FIRST max_length - len(prompt) tokens (EOS then lost: "truncated").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

PREF_FLOAT_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "chosen_logps", "rejected_logps")


# ---------------------------------------------------------------- loading


def load_rows(spec: str, split: str = "train", subset: str | None = None, limit: int | None = None) -> list[dict]:
    """Rows of a local .jsonl / .json / .parquet file, or of a hub dataset `spec` (split `split`)."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet") and not path.exists():
        raise FileNotFoundError(f"dataset file not found: {spec}")
    if suffix == ".jsonl":
        from isdaa.io import read_jsonl

        rows = read_jsonl(path)
    elif suffix == ".json":
        obj = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(obj, dict):  # columnar {"prompt": [...], ...} or {"data": [...]}
            obj = obj["data"] if "data" in obj else [dict(zip(obj, vals)) for vals in zip(*obj.values())]
        rows = list(obj)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        import datasets

        rows = datasets.load_dataset(spec, subset, split=split).to_list()
    return rows[:limit] if limit else rows


# ---------------------------------------------------------------- formats -> text


def _is_messages(x) -> bool:
    return isinstance(x, list) and all(isinstance(m, dict) and "role" in m for m in x)


def _common_prefix_len(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def split_implicit_prompt(chosen, rejected):
    """(prompt, chosen_rest, rejected_rest) from two full texts / conversations sharing a prefix."""
    if _is_messages(chosen):
        n = _common_prefix_len(chosen, rejected)
        return chosen[:n], chosen[n:], rejected[n:]
    n = _common_prefix_len(chosen, rejected)
    if n < min(len(chosen), len(rejected)):  # the texts differ at n: do not cut inside a word
        while n > 0 and not chosen[n - 1].isspace():
            n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def render_chat(tokenizer, prompt_messages: list, response_messages: list) -> tuple[str, str]:
    """Prompt text (with the generation prompt) and the response text that follows it."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("conversational data needs a tokenizer with a chat template")
    prompt = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt_messages + response_messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("chat template: the rendered conversation does not start with the rendered prompt "
                         "(generation prompt); cannot split prompt and response")
    return prompt, full[len(prompt):]


def pref_text(row: dict, tokenizer) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) text of one preference row, in any supported format."""
    chosen, rejected = row["chosen"], row["rejected"]
    prompt = row.get("prompt")
    if prompt is None:
        prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
    if _is_messages(chosen) or _is_messages(prompt):
        prompt_msgs = prompt if _is_messages(prompt) else [{"role": "user", "content": prompt}]
        p, c = render_chat(tokenizer, prompt_msgs, chosen)
        _, r = render_chat(tokenizer, prompt_msgs, rejected)
        return p, c, r
    return prompt, chosen, rejected


def sft_text(row: dict, tokenizer, source: str = "auto") -> tuple[str, str]:
    """(prompt, response) text of one SFT row."""
    if source == "auto":
        source = ("completion" if "completion" in row else "messages" if "messages" in row
                  else "chosen" if "chosen" in row else None)
        if source is None:
            raise ValueError(f"SFT row has none of completion / messages / chosen: keys {sorted(row)}")
    if source == "messages":
        msgs = row["messages"]
        return render_chat(tokenizer, msgs[:-1], msgs[-1:])
    if source == "chosen":
        prompt, chosen, _ = pref_text({**row, "rejected": row.get("rejected", row["chosen"])}, tokenizer)
        return prompt, chosen
    prompt, completion = row["prompt"], row["completion"]
    if _is_messages(completion) or _is_messages(prompt):
        prompt_msgs = prompt if _is_messages(prompt) else [{"role": "user", "content": prompt}]
        return render_chat(tokenizer, prompt_msgs, completion)
    return prompt, completion


# ---------------------------------------------------------------- tokenization


def _encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Prompt ids with the tokenizer's special tokens, unless the text already starts with BOS."""
    bos = tokenizer.bos_token
    has_bos = [bool(bos) and p.startswith(bos) for p in prompts]
    out: list = [None] * len(prompts)
    for flag in (False, True):
        idx = [i for i, h in enumerate(has_bos) if h == flag]
        if idx:
            enc = tokenizer([prompts[i] for i in idx], add_special_tokens=not flag)["input_ids"]
            for i, ids in zip(idx, enc):
                out[i] = list(ids)
    return out


def _encode_responses(tokenizer, responses: list[str]) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; responses must end with EOS")
    if not responses:
        return []
    return [list(ids) + [eos] for ids in tokenizer(responses, add_special_tokens=False)["input_ids"]]


def truncate(prompt_ids: list[int], response_ids: list[int], max_length: int, max_prompt_length: int):
    """The rule: prompt keeps its last max_prompt_length tokens, then the response its first
    max_length - len(prompt) tokens. Returns (prompt_ids, response_ids, response_truncated)."""
    prompt_ids = prompt_ids[-max_prompt_length:]
    keep = max_length - len(prompt_ids)
    return prompt_ids, response_ids[:keep], len(response_ids) > keep


def tokenize_pref(rows: list[dict], tokenizer, max_length: int, max_prompt_length: int) -> list[dict]:
    """Pre-tokenized pairs: prompt_ids, chosen_ids, rejected_ids (EOS appended, truncated), flags, and
    the optional float columns (ref_/behavior log-probs) carried over."""
    texts = [pref_text(r, tokenizer) for r in rows]
    prompts = _encode_prompts(tokenizer, [t[0] for t in texts])
    chosen = _encode_responses(tokenizer, [t[1] for t in texts])
    rejected = _encode_responses(tokenizer, [t[2] for t in texts])
    out = []
    for row, p, c, r in zip(rows, prompts, chosen, rejected):
        p_ids, c_ids, c_trunc = truncate(p, c, max_length, max_prompt_length)
        _, r_ids, r_trunc = truncate(p, r, max_length, max_prompt_length)
        ex = {"prompt_ids": p_ids, "chosen_ids": c_ids, "rejected_ids": r_ids,
              "chosen_truncated": c_trunc, "rejected_truncated": r_trunc}
        for col in PREF_FLOAT_COLUMNS:
            if row.get(col) is not None:
                ex[col] = float(row[col])
        out.append(ex)
    return out


def tokenize_sft(rows: list[dict], tokenizer, max_length: int, max_prompt_length: int, source: str = "auto"):
    texts = [sft_text(r, tokenizer, source) for r in rows]
    prompts = _encode_prompts(tokenizer, [t[0] for t in texts])
    responses = _encode_responses(tokenizer, [t[1] for t in texts])
    out = []
    for p, y in zip(prompts, responses):
        p_ids, y_ids, trunc = truncate(p, y, max_length, max_prompt_length)
        out.append({"prompt_ids": p_ids, "response_ids": y_ids, "truncated": trunc})
    return out


# ---------------------------------------------------------------- collation


def _pad(seqs: list[list[int]], prompt_lens: list[int], pad_id: int) -> dict:
    """Right-pad to the longest sequence of THIS batch (one tensor build, vectorized masks).
    response_mask marks the response tokens (EOS included)."""
    lengths = torch.tensor([len(s) for s in seqs])
    width = int(lengths.max())
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], dtype=torch.long)
    pos = torch.arange(width)
    attn = pos < lengths[:, None]                                          # (N, T)
    resp = attn & (pos >= torch.tensor(prompt_lens)[:, None])
    return {"input_ids": ids, "attention_mask": attn.long(), "response_mask": resp}


def collate_pref(examples: list[dict], pad_id: int) -> dict:
    """One concatenated batch: rows [0, B) chosen, rows [B, 2B) rejected (same prompts).

    input_ids / attention_mask / response_mask (2B, T); chosen_lengths / rejected_lengths (B,)
    response tokens with EOS; the float columns (B,) when every example has them; n_pairs, n_tokens
    (host ints, for throughput without a device sync)."""
    seqs = [e["prompt_ids"] + e["chosen_ids"] for e in examples] + \
           [e["prompt_ids"] + e["rejected_ids"] for e in examples]
    prompt_lens = [len(e["prompt_ids"]) for e in examples] * 2
    batch = _pad(seqs, prompt_lens, pad_id)
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
    batch = _pad(seqs, [len(e["prompt_ids"]) for e in examples], pad_id)
    batch["n_examples"] = len(examples)
    batch["n_tokens"] = sum(len(s) for s in seqs)
    batch["n_response_tokens"] = sum(len(e["response_ids"]) for e in examples)
    return batch
