"""Tokenization: prompt and response ids by THE rule (`encode_prompts`, `encode_chat`), truncation, and
the pre-tokenized datasets (`tokenize_pref`, `tokenize_sft`) with their drop / truncation counts."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from isdaa.data.chat import (
    ChatText,
    _apply_template,
    _common_prefix_len,
    _is_messages,
    _need_template,
    is_chat,
    pref_parts,
    prompt_messages,
    sft_parts,
)
from isdaa.data.rows import (
    _row_error,
    check_behavior_fields,
    check_finished_fields,
    check_logps_fields,
    row_where,
)


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
