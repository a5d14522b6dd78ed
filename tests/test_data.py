"""Loading, formats (standard / conversational / implicit prompt / SFT), the tokenization rule, collate."""

import json

import pytest

from isdaa.data import (
    collate_pref,
    collate_sft,
    load_rows,
    pref_text,
    sft_text,
    split_implicit_prompt,
    tokenize_pref,
    tokenize_sft,
    truncate,
)


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tokenization_rule_eos_appended_and_lengths(tok):
    ex = tokenize_pref([{"prompt": "w1 w2 w3", "chosen": "good yes", "rejected": "bad"}], tok, 64, 32)[0]
    assert ex["prompt_ids"] == tok("w1 w2 w3")["input_ids"]
    assert ex["chosen_ids"] == ids(tok, "good yes") + [tok.eos_token_id]
    assert ex["rejected_ids"] == ids(tok, "bad") + [tok.eos_token_id]
    assert not ex["chosen_truncated"]


def test_truncation_keeps_last_prompt_tokens_and_first_response_tokens():
    p, r, trunc = truncate([1, 2, 3, 4, 5], [6, 7, 8, 9], max_length=6, max_prompt_length=3)
    assert (p, r, trunc) == ([3, 4, 5], [6, 7, 8], True)       # EOS (9) lost: truncated
    p, r, trunc = truncate([1, 2], [6, 7, 9], max_length=6, max_prompt_length=3)
    assert (p, r, trunc) == ([1, 2], [6, 7, 9], False)


def test_collate_masks_prompt_and_padding(tok):
    exs = tokenize_pref([{"prompt": "w1 w2", "chosen": "good", "rejected": "bad no yes"},
                         {"prompt": "w3", "chosen": "yes yes", "rejected": "no",
                          "ref_chosen_logps": -1.0, "ref_rejected_logps": -2.0}], tok, 64, 32)
    b = collate_pref(exs, tok.pad_token_id)
    assert b["input_ids"].shape == (4, 2 + 4)               # padded to this batch's longest, not max_length
    assert b["response_mask"][0].tolist() == [False, False, True, True, False, False]
    assert b["response_mask"][2].tolist() == [False, False, True, True, True, True]   # rejected of pair 0
    assert b["attention_mask"][1].tolist() == [1, 1, 1, 1, 0, 0]
    assert b["chosen_lengths"].tolist() == [2, 3] and b["rejected_lengths"].tolist() == [4, 2]
    assert "ref_chosen_logps" not in b                        # only when every example has the column
    assert collate_pref(exs[1:], tok.pad_token_id)["ref_chosen_logps"].tolist() == [-1.0]
    s = collate_sft(tokenize_sft([{"prompt": "w1", "completion": "good"}], tok, 64, 32), tok.pad_token_id)
    assert s["response_mask"].tolist() == [[False, True, True]] and s["n_response_tokens"] == 2


def test_conversational_renders_with_chat_template(tok):
    row = {"prompt": [{"role": "user", "content": "w1 w2"}],
           "chosen": [{"role": "assistant", "content": "good"}],
           "rejected": [{"role": "assistant", "content": "bad"}]}
    prompt, chosen, rejected = pref_text(row, tok)
    assert prompt == "user: w1 w2\nassistant:"
    assert (chosen, rejected) == (" good\n", " bad\n")
    ex = tokenize_pref([row], tok, 64, 32)[0]
    # as TRL: the template's text tokenized without added special tokens, and no EOS after the template's
    # own end of turn (test_tokenize_trl.py checks each template family)
    assert ex["prompt_ids"] == ids(tok, prompt) and ex["chosen_ids"] == ids(tok, " good\n")


def test_implicit_prompt_strings_and_messages(tok):
    assert split_implicit_prompt("Human: hi Assistant: good day", "Human: hi Assistant: goodbye") == (
        "Human: hi Assistant: ", "good day", "goodbye")     # never split inside a word
    conv_c = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "good"}]
    conv_r = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "bad"}]
    assert pref_text({"chosen": conv_c, "rejected": conv_r}, tok) == ("user: w1\nassistant:", " good\n", " bad\n")


def test_sft_sources(tok):
    assert sft_text({"prompt": "w1", "completion": "good"}, tok) == ("w1", "good")
    msgs = [{"role": "user", "content": "w1"}, {"role": "assistant", "content": "good"}]
    assert sft_text({"messages": msgs}, tok) == ("user: w1\nassistant:", " good\n")
    assert sft_text({"prompt": "w1 ", "chosen": "good", "rejected": "bad"}, tok) == ("w1 ", "good")
    assert sft_text({"chosen": "Human: a Assistant: good", "rejected": "Human: a Assistant: bad"}, tok,
                    "chosen") == ("Human: a Assistant: ", "good")


def test_load_local_formats(tmp_path):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c", "chosen_logps": -1.5}, {"prompt": "d", "chosen": "e",
            "rejected": "f", "chosen_logps": -2.0}]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "x.json").write_text(json.dumps(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    for name in ("x.jsonl", "x.json", "x.parquet"):
        assert load_rows(str(tmp_path / name)) == rows
    assert load_rows(str(tmp_path / "x.jsonl"), limit=1) == rows[:1]
    with pytest.raises(FileNotFoundError):
        load_rows(str(tmp_path / "missing.jsonl"))
