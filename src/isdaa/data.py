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

Validation (every error is a `DataError` (a ValueError) naming the file, the row -- its line number in
a .jsonl file, its 0-based index otherwise -- and the field; nothing is skipped silently):
- a row must be an object with `chosen` and `rejected` (and optionally `prompt`), each a non-blank
  string or a non-empty list of `{role: str, content: str}` messages; chosen and rejected of the same
  kind; numbers, None, dicts, blank responses and malformed messages are errors;
- the optional float columns must be finite numbers <= 0 (summed log-probs), given in pairs;
- a message the chat template rejects is an error naming the row and field;
- documented rules, counted and reported in summary.json (`data/...` keys): a pair whose chosen and
  rejected token ids are identical (after truncation) is DROPPED (`data/dropped_identical_pairs`); a
  prompt longer than max_prompt_length keeps its last tokens (`data/truncated_prompts`). A response
  is never truncated to zero tokens: max_prompt_length < max_length (config) leaves it >= 1 token.
- files: invalid UTF-8, a line that is not a JSON object, an unreadable parquet, an empty file and
  an unsupported extension are errors naming the file (and line).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from isdaa.padding import pad_batch

PREF_FLOAT_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", "chosen_logps", "rejected_logps")
LOGPS_PAIRS = (("ref_chosen_logps", "ref_rejected_logps"), ("chosen_logps", "rejected_logps"))


class DataError(ValueError):
    """Bad input data; the message names the file, the row (line) and the field."""


class Rows(list):
    """Loaded rows that remember where they came from (`source`, and `lines`: the line number of each
    row in a .jsonl file), so that errors can point at the offending row."""

    def __init__(self, rows=(), source: str | None = None, lines: list[int] | None = None):
        super().__init__(rows)
        self.source, self.lines = source, lines

    def head(self, n: int | None) -> Rows:
        if not n:
            return self
        return Rows(self[:n], self.source, self.lines[:n] if self.lines is not None else None)


def row_where(rows, i: int) -> str:
    """`file: line N` (jsonl), `file: row i` (other files, 0-based) or `row i` (in-memory rows)."""
    source, lines = getattr(rows, "source", None), getattr(rows, "lines", None)
    if source and lines is not None:
        return f"{source}: line {lines[i]}"
    return f"{source}: row {i}" if source else f"row {i}"


# ---------------------------------------------------------------- loading


def load_rows(spec: str, split: str = "train", subset: str | None = None, limit: int | None = None) -> Rows:
    """Rows of a local .jsonl / .json / .parquet file, or of a hub dataset `spec` (split `split`).
    File-level problems (missing, not UTF-8, not JSON, empty, ...) raise DataError naming the file."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet") and not path.exists():
        raise FileNotFoundError(f"dataset file not found: {spec}")
    if suffix == ".jsonl":
        rows = _read_jsonl_rows(path)
    elif suffix == ".json":
        rows = _read_json_rows(path)
    elif suffix == ".parquet":
        rows = _read_parquet_rows(path)
    elif path.is_file():
        raise DataError(f"{spec}: unsupported dataset file type {suffix or '(none)'!r}; use .jsonl, .json or .parquet")
    else:
        import datasets

        try:
            rows = Rows(datasets.load_dataset(spec, subset, split=split).to_list(), source=f"{spec}[{split}]")
        except Exception as err:
            raise DataError(f"dataset {spec!r} (split {split!r}) could not be loaded: "
                            f"{type(err).__name__}: {err}") from err
    if not rows:
        raise DataError(f"{spec}: no rows (empty dataset file)" if path.is_file() else f"{spec}: no rows")
    return rows.head(limit)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8 (byte {err.start}: {err.reason})") from None


def _read_jsonl_rows(path: Path) -> Rows:
    rows, lines = [], []
    for i, line in enumerate(_decode(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {i} is not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {i} is not a JSON object (one row per line), got {type(obj).__name__}")
        rows.append(obj)
        lines.append(i)
    return Rows(rows, str(path), lines)


def _read_json_rows(path: Path) -> Rows:
    try:
        obj = json.loads(_decode(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    if isinstance(obj, dict):  # columnar {"prompt": [...], ...} or {"data": [...]}
        if "data" in obj:
            obj = obj["data"]
        else:
            lengths = {k: len(v) if isinstance(v, list) else None for k, v in obj.items()}
            if None in lengths.values() or len(set(lengths.values())) > 1:
                raise DataError(f"{path}: a JSON object must be {{'data': [rows]}} or columns of equal-length "
                                f"lists; got lengths {lengths}")
            obj = [dict(zip(obj, vals)) for vals in zip(*obj.values())]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a list of row objects, got {type(obj).__name__}")
    for i, row in enumerate(obj):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i} is not an object, got {type(row).__name__}")
    return Rows(obj, str(path))


def _read_parquet_rows(path: Path) -> Rows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return Rows(pq.read_table(path).to_pylist(), str(path))
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from None


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
    try:
        prompt = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt_messages + response_messages, tokenize=False)
    except Exception as err:  # noqa: BLE001 -- jinja2 TemplateError / raise_exception(...) in the template
        roles = [m.get("role") for m in prompt_messages + response_messages]
        raise ValueError(f"the chat template rejected the messages (roles {roles}): {err}") from None
    if not full.startswith(prompt):
        raise ValueError("chat template: the rendered conversation does not start with the rendered prompt "
                         "(generation prompt); cannot split prompt and response")
    return prompt, full[len(prompt):]


def _short(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def check_text_field(row: dict, name: str, allow_blank: bool = False):
    """The value of `name`: a string (non-blank unless allow_blank) or a non-empty message list."""
    if name not in row:
        raise ValueError(f"missing field {name!r} (the row has {sorted(row)})")
    value = row[name]
    if value is None:
        raise ValueError(f"field {name!r} is null")
    if isinstance(value, str):
        if not allow_blank and not value.strip():
            raise ValueError(f"field {name!r} is empty or whitespace-only")
        return value
    if isinstance(value, list):
        if not value:
            raise ValueError(f"field {name!r} is an empty list of messages")
        for j, m in enumerate(value):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                why = f"message {j} is malformed (needs 'role' and 'content' strings), got {_short(m)}"
                raise ValueError(f"field {name!r}: {why}")  # noqa: TRY004 -- bad data is a ValueError
        if not allow_blank and not any(m["content"].strip() for m in value):
            raise ValueError(f"field {name!r}: every message content is empty or whitespace-only")
        return value
    raise ValueError(f"field {name!r} must be a string or a list of messages, got {type(value).__name__} "
                     f"{_short(value)}")


def check_logps_fields(row: dict) -> dict:
    """The optional float columns of a row, validated: finite numbers <= 0, given in pairs."""
    out = {}
    for pair in LOGPS_PAIRS:
        present = [c for c in pair if row.get(c) is not None]
        if len(present) == 1:
            raise ValueError(f"field {present[0]!r} is given without {next(c for c in pair if c not in present)!r}")
        for col in present:
            v = row[col]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"field {col!r} must be a number, got {type(v).__name__} {_short(v)}")  # noqa: TRY004
            if not math.isfinite(v):
                raise ValueError(f"field {col!r} is not finite ({v})")
            if v > 1e-4:
                raise ValueError(f"field {col!r} must be <= 0 (a summed log-probability), got {v}")
            out[col] = float(v)
    return out


def pref_text(row: dict, tokenizer) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) text of one preference row, in any supported format. A malformed
    row raises ValueError naming the field."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be an object, got {type(row).__name__}")  # noqa: TRY004
    chosen, rejected = check_text_field(row, "chosen"), check_text_field(row, "rejected")
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise ValueError("fields 'chosen' and 'rejected' must both be strings or both be message lists")
    prompt = check_text_field(row, "prompt", allow_blank=True) if row.get("prompt") is not None else None
    if prompt is None and chosen == rejected:  # identical pair: kept whole, dropped by tokenize_pref
        if isinstance(chosen, str):
            return "", chosen, rejected
        prompt, chosen, rejected = chosen[:-1] or [{"role": "user", "content": ""}], chosen[-1:], rejected[-1:]
    elif prompt is None:
        prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
        for name, rest in (("chosen", chosen), ("rejected", rejected)):
            if not rest or (isinstance(rest, str) and not rest.strip()):
                raise ValueError(f"field {name!r} is empty after removing the prompt shared with the other "
                                 "response (implicit-prompt format)")
    if _is_messages(chosen) or _is_messages(prompt):
        prompt_msgs = prompt if _is_messages(prompt) else [{"role": "user", "content": prompt}]
        texts = []
        for name, response in (("chosen", chosen), ("rejected", rejected)):
            if not _is_messages(response):
                raise ValueError(f"field {name!r} must be a message list when the prompt is one")
            try:
                texts.append(render_chat(tokenizer, prompt_msgs, response))
            except ValueError as err:
                raise ValueError(f"field {name!r}: {err}") from None
        return texts[0][0], texts[0][1], texts[1][1]
    return prompt, chosen, rejected


def sft_text(row: dict, tokenizer, source: str = "auto") -> tuple[str, str]:
    """(prompt, response) text of one SFT row. A malformed row raises ValueError naming the field."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be an object, got {type(row).__name__}")  # noqa: TRY004
    if source == "auto":
        source = ("completion" if "completion" in row else "messages" if "messages" in row
                  else "chosen" if "chosen" in row else None)
        if source is None:
            raise ValueError(f"SFT row has none of completion / messages / chosen: keys {sorted(row)}")
    if source == "messages":
        msgs = check_text_field(row, "messages")
        if not isinstance(msgs, list):
            raise ValueError("field 'messages' must be a list of messages")
        return render_chat(tokenizer, msgs[:-1], msgs[-1:])
    if source == "chosen":
        check_text_field(row, "chosen")
        prompt, chosen, _ = pref_text({**row, "rejected": row.get("rejected", row["chosen"])}, tokenizer)
        return prompt, chosen
    prompt = check_text_field(row, "prompt", allow_blank=True)
    completion = check_text_field(row, "completion")
    if _is_messages(completion) or _is_messages(prompt):
        prompt_msgs = prompt if _is_messages(prompt) else [{"role": "user", "content": prompt}]
        if not _is_messages(completion):
            raise ValueError("field 'completion' must be a message list when the prompt is one")
        return render_chat(tokenizer, prompt_msgs, completion)
    return prompt, completion


def _row_error(rows, i: int, err: Exception) -> DataError:
    detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
    return DataError(f"{row_where(rows, i)}: {detail}")


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
    if not 0 < max_prompt_length < max_length:  # else a response could be cut to zero tokens
        raise ValueError(f"need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length})")
    prompt_ids = prompt_ids[-max_prompt_length:]
    keep = max_length - len(prompt_ids)
    return prompt_ids, response_ids[:keep], len(response_ids) > keep


def tokenize_pref(rows: list[dict], tokenizer, max_length: int, max_prompt_length: int,
                  stats: dict | None = None, drop_identical: bool = True) -> list[dict]:
    """Pre-tokenized pairs: prompt_ids, chosen_ids, rejected_ids (EOS appended, truncated), flags, the
    optional float columns (ref_/behavior log-probs) carried over, and `row` (the row's location).

    A malformed row raises DataError naming the file, row (line) and field. Pairs whose chosen and
    rejected token ids are identical (after truncation) are dropped when `drop_identical` (a dataset;
    an online batch keeps them: their loss gradient is zero anyway). `stats`, when given, receives the
    counts: data/rows, data/dropped_identical_pairs, data/truncated_prompts."""
    texts, logps = [], []
    for i, row in enumerate(rows):
        try:
            texts.append(pref_text(row, tokenizer))
            logps.append(check_logps_fields(row))
        except Exception as err:
            raise _row_error(rows, i, err) from err
    prompts = _encode_prompts(tokenizer, [t[0] for t in texts])
    chosen = _encode_responses(tokenizer, [t[1] for t in texts])
    rejected = _encode_responses(tokenizer, [t[2] for t in texts])
    out, dropped, long_prompts = [], [], 0
    for i, (cols, p, c, r) in enumerate(zip(logps, prompts, chosen, rejected)):
        p_ids, c_ids, c_trunc = truncate(p, c, max_length, max_prompt_length)
        _, r_ids, r_trunc = truncate(p, r, max_length, max_prompt_length)
        long_prompts += len(p) > max_prompt_length
        if drop_identical and c_ids == r_ids:
            dropped.append(row_where(rows, i))
            continue
        out.append({"prompt_ids": p_ids, "chosen_ids": c_ids, "rejected_ids": r_ids,
                    "chosen_truncated": c_trunc, "rejected_truncated": r_trunc, "row": row_where(rows, i), **cols})
    if dropped:
        shown = ", ".join(dropped[:3]) + (", ..." if len(dropped) > 3 else "")
        warnings.warn(f"dropped {len(dropped)} pair(s) whose chosen and rejected responses are identical "
                      f"(after truncation): {shown}", stacklevel=2)
    if stats is not None:
        stats["data/rows"] = stats.get("data/rows", 0) + len(rows)
        stats["data/dropped_identical_pairs"] = stats.get("data/dropped_identical_pairs", 0) + len(dropped)
        stats["data/truncated_prompts"] = stats.get("data/truncated_prompts", 0) + long_prompts
    return out


def tokenize_sft(rows: list[dict], tokenizer, max_length: int, max_prompt_length: int, source: str = "auto",
                 stats: dict | None = None):
    texts = []
    for i, row in enumerate(rows):
        try:
            texts.append(sft_text(row, tokenizer, source))
        except Exception as err:
            raise _row_error(rows, i, err) from err
    prompts = _encode_prompts(tokenizer, [t[0] for t in texts])
    responses = _encode_responses(tokenizer, [t[1] for t in texts])
    out, long_prompts = [], 0
    for i, (p, y) in enumerate(zip(prompts, responses)):
        p_ids, y_ids, trunc = truncate(p, y, max_length, max_prompt_length)
        long_prompts += len(p) > max_prompt_length
        out.append({"prompt_ids": p_ids, "response_ids": y_ids, "truncated": trunc, "row": row_where(rows, i)})
    if stats is not None:
        stats["data/rows"] = stats.get("data/rows", 0) + len(rows)
        stats["data/truncated_prompts"] = stats.get("data/truncated_prompts", 0) + long_prompts
    return out


# ---------------------------------------------------------------- collation


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
