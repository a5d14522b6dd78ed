"""Formats -> text: THE row parser (`pref_parts`, `sft_parts`), the implicit-prompt split and the chat
template (`ChatText`, `render_chat`, `render_prompt`)."""

from __future__ import annotations

from collections.abc import Sequence

from isdaa.data.rows import _row_error, check_text_field


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
