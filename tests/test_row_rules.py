"""Issue 11's rules for rows and runs: one row parser for training and `isdaa eval` / `isdaa label`,
`"prompt": null` is an error, dropout off, `eval --run` includes final/, and hints that say what to set
(batch larger than the data, warmup of at least the run)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import chat_family_tokenizer
from test_train import write_jsonl

from isdaa.data import DataError, load_rows, tokenize_pref


def test_null_prompt_is_a_row_error(tmp_path):
    tok = chat_family_tokenizer("chatml")
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "hello", "chosen": "good", "rejected": "bad"},
                                              {"prompt": None, "chosen": "hello good", "rejected": "hello bad"}])
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: field 'prompt' is null; .*omit the key"):
        tokenize_pref(load_rows(path), tok, 64, 32)


def test_eval_and_training_read_an_implicit_conversation_alike():
    """Shared multi-turn prefix, no `prompt`: the prompt is the shared prefix for both (main's eval took
    all but the last message of chosen, training the shared prefix)."""
    from isdaa.cli.eval import prompts_and_chosen
    from isdaa.evaluate.sampling import encode_prompts

    tok = chat_family_tokenizer("llama3")
    user = [{"role": "user", "content": "hello"}]
    row = {"chosen": user + [{"role": "assistant", "content": "good yes"}, {"role": "user", "content": "w1"},
                             {"role": "assistant", "content": "fine"}],
           "rejected": user + [{"role": "assistant", "content": "bad"}]}
    prompts, chosen = prompts_and_chosen([row], tok)
    train_prompt = tokenize_pref([row], tok, 64, 32)[0]["prompt_ids"]
    assert encode_prompts(tok, prompts)[0] == train_prompt
    assert tok.convert_ids_to_tokens(train_prompt) == ["<bos>", "<|start_header_id|>", "user", "<|end_header_id|>",
                                                       "hello", "<|eot_id|>", "<|start_header_id|>", "assistant",
                                                       "<|end_header_id|>"]
    assert chosen == ["fine"]  # the last message of the chosen continuation (the golden reward reads text)


def test_disable_dropout_zeroes_modules_and_attention_attributes():
    from isdaa.tiny import build_tiny_llama
    from isdaa.train.models import disable_dropout

    model = build_tiny_llama(vocab_size=20, hidden_size=16, num_layers=1, num_heads=2)
    model.model.layers[0].self_attn.attention_dropout = 0.3
    model.model.extra = torch.nn.Dropout(0.1)
    assert disable_dropout(model) == 2
    assert model.model.layers[0].self_attn.attention_dropout == 0.0 and model.model.extra.p == 0.0
    ids = torch.tensor([[2, 5, 6, 7]])
    model.train()
    assert torch.equal(model(ids).logits, model(ids).logits)  # train mode, yet deterministic


def pref_cfg(tiny_dir, tmp_path, n_rows, **over):
    from isdaa.config import load_config

    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": f"w{i}", "chosen": f"good w{i}", "rejected": "bad"}
                                              for i in range(n_rows)])
    return load_config({"model": {"name_or_path": str(tiny_dir)}, "data": {"train": data},
                        "output_dir": str(tmp_path / "run"), "progress": False, "mixed_precision": "no", **over})


def test_batch_larger_than_the_data_says_what_to_set(tiny_dir, tmp_path):
    from isdaa.api import train

    with pytest.raises(ValueError, match=r"6 training examples make no full batch of batch_size=8: set batch_size "
                                         r"<= 6 \(and micro_batch_size, now 4, dividing it\)"):
        train(pref_cfg(tiny_dir, tmp_path, 6, batch_size=8, micro_batch_size=4))


def test_warmup_longer_than_the_run_is_warned(tiny_dir, tmp_path):
    """Defaults lr 1e-6 and warmup_steps 100 on a 6-step run (12 pairs, batch 2): the lr never gets there."""
    from isdaa.api import train

    with pytest.warns(UserWarning, match=r"warmup \(100 steps\) >= the run's 6 steps.*optim.warmup_steps below 6"):
        train(pref_cfg(tiny_dir, tmp_path, 12, batch_size=2, micro_batch_size=2))


def test_eval_run_includes_final(tiny_dir, tmp_path):
    """A run saved only at the end (final/, no checkpoints/) is evaluated; final/ is skipped when a
    checkpoint has its step."""
    from click.testing import CliRunner

    from isdaa.cli import main
    from isdaa.evaluate.evaluator import list_checkpoints

    run = tmp_path / "run"
    shutil.copytree(tiny_dir, run / "final")
    (run / "final" / "trainer_state.json").write_text(json.dumps({"step": 6, "examples_seen": 48}))
    (run / "config.yaml").write_text("method: dpo\nbeta: 0.1\n")
    data = write_jsonl(tmp_path / "e.jsonl", [{"prompt": f"w{i} good", "chosen": "yes"} for i in range(4)])
    r = CliRunner().invoke(main, ["eval", "--run", str(run), "--ref", str(tiny_dir), "--reward",
                                  "test_eval:length_reward", "--data", data, "--n-prompts", "4",
                                  "--max-new-tokens", "4", "--no-fit"])
    assert r.exit_code == 0, r.output
    assert "| 6 | 48 |" in r.output and (run / "eval" / "final.json").exists()
    assert list_checkpoints(run) == []  # the lab's default: checkpoints only
    shutil.copytree(run / "final", run / "checkpoints" / "step-00000006")
    assert list_checkpoints(run, include_final=True) == [run / "checkpoints" / "step-00000006"]
