"""Conversational tokenization is TRL's, for the common template families (ChatML, Llama-3, Gemma, a
`{{ bos_token }}` template): ids written out by hand from each template (always), and equal to TRL
1.x's `DPOTrainer._prepare_dataset` on the same rows (when trl is installed). Training, `isdaa label`
and `isdaa eval` build the same prompt ids (one BOS, no EOS after the end of turn)."""

from __future__ import annotations

import pytest
from conftest import CHAT_FAMILIES, chat_family_tokenizer

from isdaa.data import encode_prompts, pref_parts, render_prompt, tokenize_pref

PROMPT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
CHOSEN = [{"role": "assistant", "content": "good yes"}]
REJECTED = [{"role": "assistant", "content": "bad"}]
ROW = {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}
IMPLICIT = {"chosen": PROMPT + CHOSEN, "rejected": PROMPT + REJECTED}

# Hand-rendered token strings (the word-level pre-tokenizer drops the template's whitespace).
EXPECTED = {
    "chatml": (["<|im_start|>", "system", "be", "brief", "<|im_end|>", "<|im_start|>", "user", "hello", "there",
                "<|im_end|>", "<|im_start|>", "assistant"],
               ["good", "yes", "<|im_end|>"], ["bad", "<|im_end|>"]),          # one <|im_end|>, no EOS after it
    "llama3": (["<bos>", "<|start_header_id|>", "system", "<|end_header_id|>", "be", "brief", "<|eot_id|>",
                "<|start_header_id|>", "user", "<|end_header_id|>", "hello", "there", "<|eot_id|>",
                "<|start_header_id|>", "assistant", "<|end_header_id|>"],        # one BOS
               ["good", "yes", "<|eot_id|>"], ["bad", "<|eot_id|>"]),
    "gemma": (["<bos>", "<start_of_turn>", "system", "be", "brief", "<end_of_turn>", "<start_of_turn>", "user",
               "hello", "there", "<end_of_turn>", "<start_of_turn>", "model"],
              ["good", "yes", "<end_of_turn>"], ["bad", "<end_of_turn>"]),     # no <eos> after <end_of_turn>
    "bos": (["<bos>", "system:", "be", "brief", "user:", "hello", "there", "assistant:"],
            ["good", "yes"], ["bad"]),                                          # the template ends no turn
}


def _tokens(tok, ids):
    return tok.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("family", list(CHAT_FAMILIES))
@pytest.mark.parametrize("row", [ROW, IMPLICIT], ids=["explicit", "implicit"])
def test_conversational_ids_written_by_hand(family, row):
    tok = chat_family_tokenizer(family)
    ex = tokenize_pref([row], tok, max_length=64, max_prompt_length=32)[0]
    prompt, chosen, rejected = EXPECTED[family]
    assert _tokens(tok, ex["prompt_ids"]) == prompt
    assert _tokens(tok, ex["chosen_ids"]) == chosen
    assert _tokens(tok, ex["rejected_ids"]) == rejected


@pytest.mark.parametrize("family", list(CHAT_FAMILIES))
def test_label_and_eval_prompts_are_the_trainers(family):
    """`isdaa label` samples from encode_prompts(messages); `isdaa eval` from the rendered ChatText (the
    reward reads text): both give the trainer's prompt ids, with one BOS."""
    from isdaa.evaluate.sampling import encode_prompts as sampling_prompts

    tok = chat_family_tokenizer(family)
    expect = EXPECTED[family][0]
    prompt, _, _ = pref_parts(IMPLICIT, need_rejected=False)
    assert _tokens(tok, encode_prompts(tok, [prompt])[0]) == expect
    assert _tokens(tok, sampling_prompts(tok, [render_prompt(tok, prompt)])[0]) == expect


@pytest.mark.parametrize("family", ["chatml", "gemma"])
def test_unfinished_conversational_response_has_no_end_of_turn(family):
    """A sample cut at max_new_tokens (flagged by `isdaa label`) stops after its content."""
    tok = chat_family_tokenizer(family)
    row = {**ROW, "chosen_finished": False}
    ex = tokenize_pref([row], tok, 64, 32, drop_unfinished=False)[0]
    assert _tokens(tok, ex["chosen_ids"]) == ["good", "yes"]
    assert _tokens(tok, ex["rejected_ids"]) == EXPECTED[family][2]


def _trl_ids(tok, rows, tmp_path):
    """TRL's own preprocessing of `rows` (DPOTrainer._prepare_dataset, no truncation)."""
    from types import SimpleNamespace

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path), max_length=None, report_to=[], use_cpu=True, bf16=False)
    ds = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tok), Dataset.from_list(rows), tok, args, "train")
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in ds]


@pytest.mark.parametrize("family", list(CHAT_FAMILIES))
def test_ids_equal_trl(family, tmp_path):
    pytest.importorskip("trl")
    tok = chat_family_tokenizer(family)
    multi = {"prompt": PROMPT + CHOSEN + [{"role": "user", "content": "w1 w2"}],
             "chosen": [{"role": "assistant", "content": "fine"}], "rejected": [{"role": "assistant", "content": "no"}]}
    standard = [{"prompt": "hello there w1", "chosen": " good yes", "rejected": " bad"},
                {"prompt": "w2", "chosen": " no", "rejected": " fine w3"}]
    for rows in ([ROW, multi], [IMPLICIT], standard):
        ours = [(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"])
                for e in tokenize_pref(rows, tok, max_length=256, max_prompt_length=128)]
        assert ours == _trl_ids(tok, rows, tmp_path)


@pytest.mark.parametrize("family", list(CHAT_FAMILIES))
def test_sft_messages_tokenized_alike(family):
    """SFT `messages` rows: the same conversational rule (the last message is the response)."""
    from isdaa.data import tokenize_sft

    tok = chat_family_tokenizer(family)
    ex = tokenize_sft([{"messages": PROMPT + CHOSEN}], tok, 64, 32)[0]
    prompt, chosen, _ = EXPECTED[family]
    assert (_tokens(tok, ex["prompt_ids"]), _tokens(tok, ex["response_ids"])) == (prompt, chosen)
