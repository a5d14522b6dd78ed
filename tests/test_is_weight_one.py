"""The one promise of IS-DAAs: before any update pi_theta = pi_b, so step 1 logs `is/weight_mean` = 1
and the IS-DPO loss log 2 (beta * h = 0 for every pair) -- for a model with dropout, for long rows
labelled by `isdaa label` (prompt and response truncation), and for conversational rows under each
chat-template family. Also the start-of-training check of stored log-probs (error / recompute).
(benchmarks/is_weight_step1.py prints the same numbers for any version of the code.)"""

from __future__ import annotations

import json
import math

import pytest
from conftest import CHAT_FAMILIES, chat_family_tokenizer, generated_corpus
from test_train import write_jsonl

from isdaa.api import train
from isdaa.config import load_config
from isdaa.data import load_rows, tokenize_pref

LOG2 = math.log(2.0)
MAX_LENGTH, MAX_PROMPT_LENGTH = 24, 12


def save_model(tok, path, attention_dropout=0.0):
    from isdaa.tiny import build_tiny_llama, save_tiny

    model = build_tiny_llama(vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2, seed=0,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                             bos_token_id=tok.bos_token_id)
    model.config.attention_dropout = attention_dropout
    return str(save_tiny(model, tok, path))


@pytest.fixture(scope="module")
def word_tok():
    from isdaa.tiny import build_word_tokenizer

    return build_word_tokenizer(corpus=generated_corpus(), vocab_size=128)


def step1(model, data, out, **over):
    """One IS-DPO step; (step-1 metrics record, summary)."""
    cfg = {"model": {"name_or_path": model}, "output_dir": str(out), "method": "is-dpo", "beta": 0.1,
           "data": {"train": data, "max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH},
           "batch_size": 4, "micro_batch_size": 4, "max_steps": 1, "logging_steps": 1, "progress": False,
           "optim": {"lr": 1e-3, "warmup_steps": 0}, "mixed_precision": "no",
           "ref_cache_dir": str(out.parent / "cache")}
    for key, value in over.items():
        node, _, leaf = key.rpartition(".")
        (cfg[node] if node else cfg)[leaf] = value
    summary = train(load_config(cfg))
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0]), summary


def assert_weight_one(rec):
    assert rec["is/weight_mean"] == pytest.approx(1.0, abs=1e-5)
    assert rec["loss"] == pytest.approx(LOG2, abs=1e-5)


def test_dropout_is_off_at_step_one(word_tok, tmp_path):
    """attention_dropout 0.2 (Llama's functional attention dropout, a float attribute, not nn.Dropout):
    off by default; kept with disable_dropout=false, where the weight is visibly not 1."""
    model = save_model(word_tok, tmp_path / "m", attention_dropout=0.2)
    rows = [{"prompt": f"w{i} w{i + 1}", "chosen": f"good w{i} yes", "rejected": f"bad w{i + 2}"} for i in range(8)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.warns(UserWarning, match="no behavior log-probs"):  # pi_b = pi_ref, said once
        rec, _ = step1(model, data, tmp_path / "off")
    assert_weight_one(rec)
    rec, _ = step1(model, data, tmp_path / "on", disable_dropout=False)
    assert abs(rec["is/weight_mean"] - 1.0) > 1e-3


def label_cli(model, prompts, out, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH, max_new_tokens=16):
    from click.testing import CliRunner

    from isdaa.cli import main

    data = write_jsonl(out.with_suffix(".jsonl"), [{"prompt": p} for p in prompts])
    r = CliRunner().invoke(main, ["label", "--policy", model, "--reward", "isdaa.lab.keytoken:golden_reward",
                                  "--data", data, "--out", str(out), "--max-new-tokens", str(max_new_tokens),
                                  "--max-length", str(max_length), "--max-prompt-length", str(max_prompt_length)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    # a sample of special tokens only decodes to a blank response, which the trainer refuses (as the lab does)
    keep = [r for r in rows if all((v if isinstance(v, str) else v[-1]["content"]).strip()
                                   for v in (r["chosen"], r["rejected"]))]
    return rows, write_jsonl(out / "kept.jsonl", keep)


def test_label_train_round_trip_on_long_rows(word_tok, tmp_path):
    """Prompts of 20 words (> max_prompt_length 12) and responses up to 16 tokens (12 + 16 > 24): the
    stored pi_b / pi_ref log-probs are those of the truncated ids; unfinished samples carry no EOS and
    are dropped by default (counted) or kept with data.drop_unfinished=false."""
    model = save_model(word_tok, tmp_path / "m")
    prompts = [" ".join(f"w{(i * 7 + j) % 50}" for j in range(20)) for i in range(12)]
    _, data = label_cli(model, prompts, tmp_path / "golden")
    rows = load_rows(data)
    unfinished = sum(not (r["chosen_finished"] and r["rejected_finished"]) for r in rows)
    assert unfinished > 0 and rows[0]["behavior_model"] == model
    rec, summary = step1(model, data, tmp_path / "keep", **{"data.drop_unfinished": False})
    assert_weight_one(rec)
    assert summary["data/truncated_prompts"] == summary["data/rows"] > 0
    stats = {}
    with pytest.warns(UserWarning, match=f"dropped {unfinished} pair"):
        kept = tokenize_pref(load_rows(data), word_tok, MAX_LENGTH, MAX_PROMPT_LENGTH, stats,
                             drop_unfinished=True)  # data.drop_unfinished's default
    assert stats["data/dropped_unfinished_pairs"] == unfinished and len(kept) == len(rows) - unfinished


def test_stored_logps_checked_against_the_trainers_ids(word_tok, tmp_path):
    """Rows labelled for max_length 24 trained at max_length 20: the check names the rows and the
    likely cause; check_logps=recompute recomputes them (weight 1 again)."""
    model = save_model(word_tok, tmp_path / "m")
    prompts = [" ".join(f"w{(i * 3 + j) % 50}" for j in range(20)) for i in range(8)]
    _, data = label_cli(model, prompts, tmp_path / "golden")
    with pytest.raises(ValueError, match=r"(?s)do not match the reference model.*kept\.jsonl: line \d+.*truncation"):
        step1(model, data, tmp_path / "err", **{"data.max_length": 20, "data.drop_unfinished": False})
    rec, _ = step1(model, data, tmp_path / "re", check_logps="recompute",
                   **{"data.max_length": 20, "data.drop_unfinished": False})
    assert_weight_one(rec)


@pytest.mark.parametrize("family", list(CHAT_FAMILIES))
def test_conversational_rows_per_template_family(family, tmp_path):
    """Conversational prompts labelled by `isdaa label` (sampled from the template's generation prompt,
    written as conversational rows) and trained with TRL's tokenization: weight 1 at step 1."""
    tok = chat_family_tokenizer(family)
    model = save_model(tok, tmp_path / "m")
    prompts = [[{"role": "user", "content": f"hello w{i} w{i + 3}"}] for i in range(12)]
    rows, data = label_cli(model, prompts, tmp_path / "golden", max_length=64, max_prompt_length=32,
                           max_new_tokens=8)
    assert isinstance(rows[0]["prompt"], list) and rows[0]["chosen"][0]["role"] == "assistant"
    rec, _ = step1(model, data, tmp_path / "run", **{"data.drop_unfinished": False, "data.max_length": 64,
                                                     "data.max_prompt_length": 32})
    assert_weight_one(rec)


def test_declared_behavior_logps_checked_against_the_initial_policy(word_tok, tmp_path):
    """Behavior columns of rows declaring the initial policy (at T = 1) as their sampler are checked;
    off by 0.5 nat they are an error, recomputed with check_logps=recompute (weight 1 again). Rows
    sampled at another temperature are not the initial policy: not checked."""
    model = save_model(word_tok, tmp_path / "m")
    _, data = label_cli(model, [f"w{i} w{i + 1} good" for i in range(8)], tmp_path / "golden")
    rows = [{**r, "chosen_logps": r["chosen_logps"] - 0.5} for r in load_rows(data)]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    over = {"data.drop_unfinished": False}
    with pytest.raises(ValueError, match=r"chosen_logps / rejected_logps do not match the initial policy"):
        step1(model, bad, tmp_path / "err", **over)
    rec, _ = step1(model, bad, tmp_path / "re", check_logps="recompute", **over)
    assert_weight_one(rec)
    tempered = write_jsonl(tmp_path / "t.jsonl", [{**r, "behavior_temperature": 0.7} for r in rows])
    rec, _ = step1(model, tempered, tmp_path / "t", **over)
    # joint ratio pi_theta(y_c) pi_theta(y_r) / (pi_b(y_c) pi_b(y_r)) = e^0.5 for every pair, as stored
    assert rec["is/weight_mean"] == pytest.approx(math.exp(0.5), abs=1e-4)
