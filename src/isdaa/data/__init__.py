"""Data: load rows through `datasets` (hub name, local .jsonl / .json / .parquet / .csv and globs,
`save_to_disk` folders, split slices, streaming: loading.py), parse every format with ONE row parser
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
  an unsupported extension are errors naming the file (and line); a split a source does not have (a
  local file has only `train`) is an error, never a silent read of another split.

Modules: rows (DataError, Rows, field checks), loading, chat (formats -> text), tokenize, collate.
"""

from isdaa.data.chat import (
    ChatText,
    is_chat,
    pref_parts,
    pref_text,
    prompt_messages,
    prompts_and_chosen,
    render_chat,
    render_prompt,
    sft_parts,
    sft_text,
    split_implicit_prompt,
)
from isdaa.data.collate import collate_pref, collate_sft
from isdaa.data.loading import MIXTURE_KEYS, load_rows, stream_rows
from isdaa.data.rows import (
    LOGPS_PAIRS,
    PREF_FLOAT_COLUMNS,
    DataError,
    LineIndex,
    Rows,
    Source,
    check_behavior_fields,
    check_finished_fields,
    check_logps_fields,
    check_text_field,
    row_where,
)
from isdaa.data.tokenize import (
    encode_chat,
    encode_pairs,
    encode_prompts,
    rows_progress,
    tokenize_pref,
    tokenize_sft,
    truncate,
)

__all__ = [
    # rows
    "DataError", "Rows", "Source", "LineIndex", "row_where", "PREF_FLOAT_COLUMNS", "LOGPS_PAIRS",
    "check_text_field", "check_logps_fields", "check_finished_fields", "check_behavior_fields",
    # loading
    "load_rows", "stream_rows", "MIXTURE_KEYS",
    # chat: formats -> text
    "ChatText", "split_implicit_prompt", "render_chat", "pref_parts", "is_chat", "prompt_messages",
    "render_prompt", "pref_text", "prompts_and_chosen", "sft_parts", "sft_text",
    # tokenize
    "encode_prompts", "encode_chat", "rows_progress", "encode_pairs", "truncate", "tokenize_pref",
    "tokenize_sft",
    # collate
    "collate_pref", "collate_sft",
]
