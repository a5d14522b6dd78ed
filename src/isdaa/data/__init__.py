"""Data: load rows (hub name / .jsonl / .json / .parquet), parse every format with ONE row parser
(`pref_parts`, also used by `isdaa eval` / `isdaa label`), tokenize ONCE with the documented rule, and
collate padded batches.

Formats (as TRL has them):
- standard: `prompt`, `chosen`, `rejected` strings;
- conversational: the same keys holding lists of `{role, content}` messages, tokenized as TRL 1.x
  does (`encode_chat`: the chat template's prompt with the generation prompt; a response is the rest of
  the tokenized full conversation, ending with the template's end of turn, no EOS added);
- implicit prompt: no `prompt` key; `chosen` / `rejected` full texts or conversations sharing a prefix,
  which becomes the prompt (strings are cut back to a whitespace boundary so no word is split);
  `"prompt": null` is an error.
SFT rows: `prompt` + `completion`, `messages` (the last message is the response), or the chosen side
of preference rows (the paper's HH recipe).

Tokenization rule (ARCHITECTURE.md): standard prompt_ids = tokenizer(prompt) with the tokenizer's
special tokens (skipped when the text already starts with BOS, or is a rendered `ChatText`);
response_ids = tokenizer(response, add_special_tokens=False) + [eos], no EOS for a response flagged
unfinished (`chosen_finished` / `rejected_finished` false). The prompt keeps its LAST max_prompt_length
tokens, then the response its FIRST max_length - len(prompt) tokens (EOS then lost: "truncated").

Validation (every error is a `DataError` (a ValueError) naming the file, the row -- its line number in
a .jsonl file, its 0-based index otherwise -- and the field; nothing is skipped silently):
- a row must be an object with `chosen` and `rejected` (and optionally `prompt`), each a non-blank
  string or a non-empty list of `{role: str, content: str}` messages; chosen and rejected of the same
  kind; numbers, None, dicts, blank responses and malformed messages are errors;
- the optional float columns must be finite numbers <= 0 (summed log-probs), given in pairs;
  `chosen_finished` / `rejected_finished` booleans; `behavior_model` a string, `behavior_temperature` > 0;
- a message the chat template rejects is an error naming the row and field;
- documented rules, counted and reported in summary.json (`data/...` keys): a pair whose chosen and
  rejected token ids are identical (after truncation) is DROPPED (`data/dropped_identical_pairs`); a
  prompt longer than max_prompt_length keeps its last tokens (`data/truncated_prompts`); a pair with an
  unfinished response is DROPPED unless kept (`data/dropped_unfinished_pairs`). A response
  is never truncated to zero tokens: max_prompt_length < max_length (config) leaves it >= 1 token.
- files: invalid UTF-8, a line that is not a JSON object, an unreadable parquet, an empty file and
  an unsupported extension are errors naming the file (and line).
"""

from __future__ import annotations

import glob
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
    row in a .jsonl file), so that errors can point at the offending row. A mixture of several sources
    keeps each row's location in `where`."""

    def __init__(self, rows=(), source: str | None = None, lines: list[int] | None = None,
                 where: list[str] | None = None):
        super().__init__(rows)
        self.source, self.lines, self.where = source, lines, where

    def head(self, n: int | None) -> Rows:
        if not n:
            return self
        cut = (lambda x: x[:n] if x is not None else None)
        return Rows(self[:n], self.source, cut(self.lines), cut(self.where))


def row_where(rows, i: int) -> str:
    """`file: line N` (jsonl), `file: row i` (other files, 0-based) or `row i` (in-memory rows)."""
    if getattr(rows, "where", None) is not None:
        return rows.where[i]
    source, lines = getattr(rows, "source", None), getattr(rows, "lines", None)
    if source and lines is not None:
        return f"{source}: line {lines[i]}"
    return f"{source}: row {i}" if source else f"row {i}"


# ---------------------------------------------------------------- loading


def load_rows(spec, split: str = "train", subset: str | None = None, limit: int | None = None,
              streaming: bool = False, num_proc: int | None = None) -> Rows:
    """Rows of a local .jsonl / .json / .parquet file, a glob of such files, a hub dataset or local
    dataset folder `spec` (`datasets.load_dataset`, split `split`, `streaming`, `num_proc`), or a list of
    these (a mixture, concatenated in order; an entry may be a mapping as in TRL's `datasets:` list:
    path, name, split, data_files, data_dir, columns). `limit` keeps the first rows (a streamed dataset
    reads only those). File-level problems (missing, not UTF-8, not JSON, empty, ...) raise DataError
    naming the file; local files are read by isdaa's own readers so that errors name the line."""
    if isinstance(spec, (list, tuple)) or (isinstance(spec, str) and _is_glob(spec)):
        return _load_mixture(spec, split, subset, limit, streaming, num_proc)
    if isinstance(spec, dict):
        return _load_mixture([spec], split, subset, limit, streaming, num_proc)
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
        rows = _load_hub(spec, split, subset, limit, streaming, num_proc)
    if not rows:
        raise DataError(f"{spec}: no rows (empty dataset file)" if path.is_file() else f"{spec}: no rows")
    return rows.head(limit)


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[") and not Path(spec).exists()


def _load_hub(spec: str, split: str, subset, limit, streaming: bool, num_proc, **kwargs) -> Rows:
    """`datasets.load_dataset`: only the first `limit` rows become Python rows (streamed: only those are
    read)."""
    import datasets

    try:
        if streaming:
            ds = datasets.load_dataset(spec, subset, split=split, streaming=True, **kwargs)
            rows = list(ds.take(limit) if limit else ds)
        else:
            ds = datasets.load_dataset(spec, subset, split=split, num_proc=num_proc, **kwargs)
            rows = (ds.select(range(min(limit, len(ds)))) if limit else ds).to_list()
    except Exception as err:
        raise DataError(f"dataset {spec!r} (split {split!r}) could not be loaded: "
                        f"{type(err).__name__}: {err}") from err
    return Rows(rows, source=f"{spec}[{split}]")


MIXTURE_KEYS = {"path", "name", "split", "data_files", "data_dir", "columns"}


def _load_mixture(specs, split, subset, limit, streaming, num_proc) -> Rows:
    """A glob (its files, sorted) or a list of specs, concatenated; each row keeps its own location."""
    if isinstance(specs, str):
        pattern, specs = specs, sorted(glob.glob(specs, recursive=True))
        if not specs:
            raise FileNotFoundError(f"no dataset file matches {pattern!r}")
    rows, where = [], []
    for entry in specs:
        if isinstance(entry, dict):
            unknown = set(entry) - MIXTURE_KEYS
            if unknown or "path" not in entry:
                raise DataError(f"dataset mixture entry {entry}: needs `path`; keys {sorted(MIXTURE_KEYS)}"
                                + (f", not {sorted(unknown)}" if unknown else ""))
            kw = {k: entry[k] for k in ("data_files", "data_dir") if entry.get(k) is not None}
            e_split, e_subset = entry.get("split", split), entry.get("name", subset)
            if kw:  # a builder (json, parquet, csv, ...) over files: errors name the files
                part = _load_hub(entry["path"], e_split, e_subset, None, streaming, num_proc, **kw)
                part.source = f"{entry['path']}:{kw.get('data_files', kw.get('data_dir'))}[{e_split}]"
            else:
                part = load_rows(entry["path"], e_split, e_subset, None, streaming, num_proc)
            if entry.get("columns"):
                cols = list(entry["columns"])
                part = Rows([{c: r.get(c) for c in cols} for r in part], part.source, part.lines, part.where)
        else:
            part = load_rows(entry, split, subset, None, streaming, num_proc)
        rows += part
        where += [row_where(part, i) for i in range(len(part))]
        if limit and len(rows) >= limit:
            break
    return Rows(rows, source=None, where=where).head(limit)


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


def _need_template(tokenizer) -> None:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("conversational data needs a tokenizer with a chat template")


def _apply_template(tokenizer, messages: list, tokenize: bool = False, add_generation_prompt: bool = False):
    """`tokenizer.apply_chat_template` (text, or ids: the rendered text tokenized WITHOUT added
    special tokens); a template error becomes a ValueError naming the roles."""
    try:
        out = tokenizer.apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=add_generation_prompt,
                                            **({"return_dict": True} if tokenize else {}))
    except Exception as err:  # noqa: BLE001 -- jinja2 TemplateError / raise_exception(...) in the template
        roles = [m.get("role") for m in messages]
        raise ValueError(f"the chat template rejected the messages (roles {roles}): {err}") from None
    return list(out["input_ids"]) if tokenize else out


def render_chat(tokenizer, prompt_messages: list, response_messages: list) -> tuple[str, str]:
    """Prompt text (with the generation prompt) and the response text that follows it."""
    _need_template(tokenizer)
    prompt = _apply_template(tokenizer, prompt_messages, add_generation_prompt=True)
    full = _apply_template(tokenizer, prompt_messages + response_messages)
    if not full.startswith(prompt):
        raise ValueError("chat template: the rendered conversation does not start with the rendered prompt "
                         "(generation prompt); cannot split prompt and response")
    return ChatText(prompt), full[len(prompt):]


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


class ChatText(str):
    """Text rendered by a chat template. It is tokenized WITHOUT the tokenizer's own special tokens
    (the template holds them, e.g. `{{ bos_token }}`), as `apply_chat_template(tokenize=True)` and
    TRL do: a plain string prompt would get a second BOS."""


def pref_parts(row: dict, need_rejected: bool = True):
    """(prompt, chosen, rejected) of a preference or evaluation row, each a string or a message list:
    THE row parser of isdaa (training, `isdaa label`, `isdaa eval`). Rules:
    - `prompt` given: taken as is (a string prompt with message responses becomes one user message
      when rendered); `"prompt": null` is an error (omit the key for the implicit-prompt format);
    - no `prompt`, chosen != rejected: the prompt is their shared prefix (`split_implicit_prompt`);
    - no `prompt`, one conversation (no `rejected`, or an identical pair): all but its last message;
      a string needs an explicit prompt (an identical string pair is kept whole: dropped later).
    `rejected` is None when not `need_rejected` and absent. A malformed row raises ValueError naming
    the field."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be an object, got {type(row).__name__}")  # noqa: TRY004
    if "prompt" in row and row["prompt"] is None:
        raise ValueError("field 'prompt' is null; give a prompt, or omit the key for the implicit-prompt format "
                         "(the prompt is then the prefix chosen and rejected share)")
    chosen = check_text_field(row, "chosen")
    rejected = check_text_field(row, "rejected") if need_rejected or row.get("rejected") is not None else None
    if rejected is not None and isinstance(chosen, str) != isinstance(rejected, str):
        raise ValueError("fields 'chosen' and 'rejected' must both be strings or both be message lists")
    if "prompt" in row:
        return check_text_field(row, "prompt", allow_blank=True), chosen, rejected
    if rejected is not None and chosen != rejected:
        prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
        for name, rest in (("chosen", chosen), ("rejected", rejected)):
            if not rest or (isinstance(rest, str) and not rest.strip()):
                raise ValueError(f"field {name!r} is empty after removing the prompt shared with the other "
                                 "response (implicit-prompt format)")
        return prompt, chosen, rejected
    if isinstance(chosen, str):
        if rejected is None:
            raise ValueError(f"missing field 'prompt' (the row has {sorted(row)}); a string response needs one")
        return "", chosen, rejected  # identical string pair: kept whole, dropped by tokenize_pref
    if len(chosen) < 2 and rejected is None:
        raise ValueError("field 'chosen': a conversation without `prompt` needs the prompt messages before the "
                         "response")
    prompt = chosen[:-1] or [{"role": "user", "content": ""}]  # (an identical one-message pair: dropped later)
    return prompt, chosen[-1:], None if rejected is None else rejected[-1:]


def is_chat(prompt, *responses) -> bool:
    """Conversational: the prompt or a response is a message list."""
    return any(_is_messages(x) for x in (prompt, *responses))


def prompt_messages(prompt) -> list:
    return prompt if _is_messages(prompt) else [{"role": "user", "content": prompt}]


def render_prompt(tokenizer, prompt) -> str:
    """The prompt's text as the model sees it: a string as is; messages rendered with the chat template
    and the generation prompt (a `ChatText`, tokenized without added special tokens)."""
    if not _is_messages(prompt):
        return prompt
    _need_template(tokenizer)
    return ChatText(_apply_template(tokenizer, prompt, add_generation_prompt=True))


def pref_text(row: dict, tokenizer) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) TEXT of one preference row (conversations rendered; a response is
    the rest of the rendered conversation). Tokenization does not go through this text for
    conversations (see `encode_chat`), but their ids decode to it."""
    prompt, chosen, rejected = pref_parts(row)
    if not is_chat(prompt, chosen, rejected):
        return prompt, chosen, rejected
    texts = []
    for name, response in (("chosen", chosen), ("rejected", rejected)):
        if not _is_messages(response):
            raise ValueError(f"field {name!r} must be a message list when the prompt is one")
        try:
            texts.append(render_chat(tokenizer, prompt_messages(prompt), response))
        except ValueError as err:
            raise ValueError(f"field {name!r}: {err}") from None
    return texts[0][0], texts[0][1], texts[1][1]


def prompts_and_chosen(rows, tokenizer, need_chosen: bool = True, render: bool = True):
    """(prompts, chosen) of evaluation / labelling rows through THE row parser (`pref_parts`: standard,
    conversational or implicit prompt, exactly as training reads them). A conversational prompt is
    rendered with the chat template and the generation prompt (a `ChatText`: tokenized without a
    second BOS) when `render`, else kept as messages (`isdaa label` writes conversational rows); a
    conversational chosen response is its last message's content. need_chosen=False: a `prompt`
    column alone is enough (chosen is then None). A bad row raises DataError naming the file, row
    and field."""
    prompts, chosen = [], []
    for i, row in enumerate(rows):
        try:
            if not need_chosen and isinstance(row, dict) and "prompt" in row and "chosen" not in row:
                if row["prompt"] is None:
                    raise ValueError("field 'prompt' is null")
                p, c = check_text_field(row, "prompt"), None
            else:
                p, c, _ = pref_parts(row, need_rejected=False)
            prompts.append(render_prompt(tokenizer, p) if render else p)
        except ValueError as err:
            raise _row_error(rows, i, err) from None
        chosen.append(c if c is None or isinstance(c, str) else c[-1]["content"])
    return prompts, chosen


def sft_parts(row: dict, source: str = "auto"):
    """(prompt, response) of one SFT row, each a string or a message list. A malformed row raises
    ValueError naming the field."""
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
        return msgs[:-1], msgs[-1:]
    if source == "chosen":
        check_text_field(row, "chosen")
        prompt, chosen, _ = pref_parts({**row, "rejected": row.get("rejected", row["chosen"])})
        return prompt, chosen
    prompt = check_text_field(row, "prompt", allow_blank=True)
    completion = check_text_field(row, "completion")
    if is_chat(prompt) and not _is_messages(completion):
        raise ValueError("field 'completion' must be a message list when the prompt is one")
    return prompt, completion


def sft_text(row: dict, tokenizer, source: str = "auto") -> tuple[str, str]:
    """(prompt, response) text of one SFT row (conversations rendered)."""
    prompt, response = sft_parts(row, source)
    if not is_chat(prompt, response):
        return prompt, response
    if not _is_messages(response):
        raise ValueError("the response must be a message list when the prompt is one")
    return render_chat(tokenizer, prompt_messages(prompt), response)


def _row_error(rows, i: int, err: Exception) -> DataError:
    detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
    return DataError(f"{row_where(rows, i)}: {detail}")


# ---------------------------------------------------------------- tokenization


def encode_prompts(tokenizer, prompts: Sequence) -> list[list[int]]:
    """Prompt ids, THE rule shared by training, labelling and evaluation: a message list through the
    chat template with the generation prompt (no added special tokens, as TRL); a `ChatText` without
    added special tokens; a string with the tokenizer's special tokens (e.g. BOS), unless it already
    starts with BOS."""
    bos = tokenizer.bos_token
    out: list = [None] * len(prompts)
    groups: dict[bool, list[int]] = {True: [], False: []}  # add_special_tokens -> indices
    for i, p in enumerate(prompts):
        if _is_messages(p):
            _need_template(tokenizer)
            out[i] = _apply_template(tokenizer, p, tokenize=True, add_generation_prompt=True)
        else:
            groups[not (isinstance(p, ChatText) or (bool(bos) and p.startswith(bos)))].append(i)
    for special, idx in groups.items():
        if idx:
            enc = tokenizer([str(prompts[i]) for i in idx], add_special_tokens=special)["input_ids"]
            for i, ids in zip(idx, enc):
                out[i] = list(ids)
    return out


def _encode_responses(tokenizer, responses: list[str], finished: list[bool]) -> list[list[int]]:
    """tokenizer(response) + [eos] for a finished response; an unfinished one gets no EOS."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; responses must end with EOS")
    if not responses:
        return []
    enc = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    return [list(ids) + [eos] * done for ids, done in zip(enc, finished)]


def encode_chat(tokenizer, prompt, responses: Sequence[list], finished: Sequence[bool]):
    """TRL's conversational tokenization (trl 1.x `DPOTrainer._prepare_dataset`): prompt ids =
    apply_chat_template(prompt, add_generation_prompt=True, tokenize=True); a response = the ids of
    apply_chat_template(prompt + response, tokenize=True) after the prefix they share with the prompt
    ids (the prompt is cut to the shortest shared prefix). No EOS is appended: the template's
    end-of-turn ends the response. An unfinished response (a sample cut at max_new_tokens) stops at
    the end of its last message's content: no end-of-turn it did not emit. Returns (prompt_ids,
    [response_ids, ...])."""
    _need_template(tokenizer)
    msgs = prompt_messages(prompt)
    p_ids = _apply_template(tokenizer, msgs, tokenize=True, add_generation_prompt=True)
    fulls = []
    for name, resp, done in zip(("chosen", "rejected"), responses, finished):
        if not _is_messages(resp):
            raise ValueError(f"field {name!r} must be a message list when the prompt is one")
        try:
            if done:
                fulls.append(_apply_template(tokenizer, msgs + resp, tokenize=True))
                continue
            text, content = _apply_template(tokenizer, msgs + resp), resp[-1]["content"]
            end = text.rfind(content) if content.strip() else -1
            if end < 0:
                raise ValueError("an unfinished response's content is not found in the rendered conversation")
            fulls.append(tokenizer(text[: end + len(content)], add_special_tokens=False)["input_ids"])
        except ValueError as err:
            raise ValueError(f"field {name!r}: {err}") from None
    n = min(_common_prefix_len(p_ids, f) for f in fulls)
    return p_ids[:n], [list(f[n:]) for f in fulls]


def check_finished_fields(row: dict) -> tuple[bool, bool]:
    """(chosen_finished, rejected_finished): optional booleans written by `isdaa label` (False: the
    sample was cut at max_new_tokens and has no EOS); absent means finished."""
    out = []
    for col in ("chosen_finished", "rejected_finished"):
        v = row.get(col, True)
        if not isinstance(v, bool):
            raise ValueError(f"field {col!r} must be true or false, got {_short(v)}")  # noqa: TRY004
        out.append(v)
    return out[0], out[1]


def check_behavior_fields(row: dict) -> dict:
    """The optional declaration of the sampler pi_b (`isdaa label` writes it): `behavior_model` (name
    or path) and `behavior_temperature` (> 0)."""
    out = {}
    if row.get("behavior_model") is not None:
        if not isinstance(row["behavior_model"], str):
            raise ValueError(f"field 'behavior_model' must be a string, got {_short(row['behavior_model'])}")  # noqa: TRY004
        out["behavior_model"] = row["behavior_model"]
    t = row.get("behavior_temperature")
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"field 'behavior_temperature' must be a number > 0, got {_short(t)}")
        out["behavior_temperature"] = float(t)
    return out


def rows_progress(rows, progress: bool, desc: str = "tokenizing"):
    """`rows`, iterated under a tqdm bar when `progress` (large datasets take seconds to parse)."""
    if not progress:
        return rows
    from tqdm.auto import tqdm

    return tqdm(rows, desc=desc, unit="row", leave=False)


def encode_pairs(rows, tokenizer, progress: bool = False) -> list[dict]:
    """Full (untruncated) ids of each preference row: prompt_ids, chosen_ids, rejected_ids, the flags
    chosen_finished / rejected_finished and the row's float columns. Standard rows follow the
    tokenization rule (batched), conversational rows `encode_chat`. A malformed row raises DataError
    naming the file, row (line) and field."""
    out, plain = [], []
    for i, row in enumerate(rows_progress(rows, progress)):
        try:
            prompt, chosen, rejected = pref_parts(row)
            done = check_finished_fields(row)
            ex = {"chosen_finished": done[0], "rejected_finished": done[1], **check_logps_fields(row),
                  **check_behavior_fields(row)}
            if is_chat(prompt, chosen, rejected):
                ex["prompt_ids"], (ex["chosen_ids"], ex["rejected_ids"]) = encode_chat(
                    tokenizer, prompt, (chosen, rejected), done)
                for name in ("chosen", "rejected"):
                    if not ex[f"{name}_ids"]:
                        raise ValueError(f"field {name!r}: the chat template renders it to no tokens")
            else:
                plain.append((i, prompt, chosen, rejected))
        except Exception as err:
            raise _row_error(rows, i, err) from err
        out.append(ex)
    if plain:
        idx = [t[0] for t in plain]
        prompts = encode_prompts(tokenizer, [t[1] for t in plain])
        chosen = _encode_responses(tokenizer, [t[2] for t in plain], [out[i]["chosen_finished"] for i in idx])
        rejected = _encode_responses(tokenizer, [t[3] for t in plain], [out[i]["rejected_finished"] for i in idx])
        for i, p, c, r in zip(idx, prompts, chosen, rejected):
            out[i].update(prompt_ids=p, chosen_ids=c, rejected_ids=r)
    return out


def truncate(prompt_ids: list[int], response_ids: list[int], max_length: int, max_prompt_length: int):
    """The rule: prompt keeps its last max_prompt_length tokens, then the response its first
    max_length - len(prompt) tokens. Returns (prompt_ids, response_ids, response_truncated)."""
    if not 0 < max_prompt_length < max_length:  # else a response could be cut to zero tokens
        raise ValueError(f"need 0 < max_prompt_length ({max_prompt_length}) < max_length ({max_length})")
    prompt_ids = prompt_ids[-max_prompt_length:]
    keep = max_length - len(prompt_ids)
    return prompt_ids, response_ids[:keep], len(response_ids) > keep


def _warn_dropped(what: str, where: list[str]) -> None:
    if where:
        shown = ", ".join(where[:3]) + (", ..." if len(where) > 3 else "")
        warnings.warn(f"dropped {len(where)} pair(s) {what}: {shown}", stacklevel=3)


def tokenize_pref(rows: list[dict], tokenizer, max_length: int, max_prompt_length: int,
                  stats: dict | None = None, drop_identical: bool = True, drop_unfinished: bool = False,
                  progress: bool = False) -> list[dict]:
    """Pre-tokenized pairs (`encode_pairs`, then `truncate`): prompt_ids, chosen_ids, rejected_ids,
    chosen/rejected_truncated (cut at max_length) and _finished (sampled to EOS), the optional float
    columns (ref_/behavior log-probs) carried over, and `row` (the row's location).

    Dropped, counted and warned about: pairs whose chosen and rejected token ids are identical (after
    truncation) when `drop_identical` (a dataset; an online batch keeps them: their loss gradient is
    zero anyway); pairs with an unfinished response (`chosen_finished` / `rejected_finished` false:
    written by `isdaa label` for samples cut at max_new_tokens) when `drop_unfinished` (the trainer
    passes data.drop_unfinished, true by default; here false: one example per row). `stats`, when
    given, receives the counts: data/rows, data/dropped_identical_pairs, data/dropped_unfinished_pairs,
    data/truncated_prompts."""
    out, identical, unfinished, long_prompts = [], [], [], 0
    for i, ex in enumerate(encode_pairs(rows, tokenizer, progress)):
        p = ex.pop("prompt_ids")
        p_ids, ex["chosen_ids"], ex["chosen_truncated"] = truncate(p, ex["chosen_ids"], max_length, max_prompt_length)
        _, ex["rejected_ids"], ex["rejected_truncated"] = truncate(p, ex["rejected_ids"], max_length,
                                                                   max_prompt_length)
        long_prompts += len(p) > max_prompt_length
        if drop_unfinished and not (ex["chosen_finished"] and ex["rejected_finished"]):
            unfinished.append(row_where(rows, i))
        elif drop_identical and ex["chosen_ids"] == ex["rejected_ids"]:
            identical.append(row_where(rows, i))
        else:
            out.append({"prompt_ids": p_ids, **ex, "row": row_where(rows, i)})
    _warn_dropped("whose chosen and rejected responses are identical (after truncation)", identical)
    _warn_dropped("with a response cut at max_new_tokens (`chosen_finished` / `rejected_finished` false; "
                  "data.drop_unfinished: false keeps them, without EOS)", unfinished)
    if stats is not None:
        stats["data/rows"] = stats.get("data/rows", 0) + len(rows)
        stats["data/dropped_identical_pairs"] = stats.get("data/dropped_identical_pairs", 0) + len(identical)
        stats["data/dropped_unfinished_pairs"] = stats.get("data/dropped_unfinished_pairs", 0) + len(unfinished)
        stats["data/truncated_prompts"] = stats.get("data/truncated_prompts", 0) + long_prompts
    return out


def tokenize_sft(rows: list[dict], tokenizer, max_length: int, max_prompt_length: int, source: str = "auto",
                 stats: dict | None = None, progress: bool = False):
    """SFT examples (prompt_ids, response_ids, truncated, row): standard rows by the tokenization rule
    (EOS appended), conversational rows as TRL (`encode_chat`: the template's end of turn, no EOS)."""
    full, plain = [], []
    for i, row in enumerate(rows_progress(rows, progress)):
        try:
            prompt, response = sft_parts(row, source)
            if is_chat(prompt, response):
                p, (y,) = encode_chat(tokenizer, prompt, [response], [True])
                full.append((p, y))
            else:
                plain.append((i, prompt, response))
                full.append(None)
        except Exception as err:
            raise _row_error(rows, i, err) from err
    if plain:
        prompts = encode_prompts(tokenizer, [t[1] for t in plain])
        responses = _encode_responses(tokenizer, [t[2] for t in plain], [True] * len(plain))
        for (i, _, _), p, y in zip(plain, prompts, responses):
            full[i] = (p, y)
    out, long_prompts = [], 0
    for i, (p, y) in enumerate(full):
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
