"""TRL's output layout: a run trained from a TRL YAML is read the way TRL users read theirs -- the model,
tokenizer and card at output_dir (`from_pretrained(output_dir)`), `checkpoint-N/` folders each resumable
(`resume_from_checkpoint`), `save_total_limit`, and trainer_state.json in transformers' format with its
`log_history`; runs written in the old layout (checkpoints/step-XXXXXXXX/, final/) stay readable."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file
from test_trl_compat import _tiny_trl_yaml, pairs_folder

from isdaa.cli import main
from isdaa.io import read_jsonl

VOLATILE = {"tokens_per_s", "elapsed_s"}


@pytest.fixture(autouse=True)
def one_process(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ISDAA_CACHE", str(tmp_path / "cache"))


def _data_folder(root):
    """A local dataset folder with train and test files: `load_dataset(folder)` gives both splits."""
    return pairs_folder(root)


def _train(config, *args):
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(config), "progress=false", *args])
    assert r.exit_code == 0, r.output
    return r


def _records(out):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_jsonl(out / "metrics.jsonl")]


def _weights(path):
    return load_file(path / "model.safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trl_run(tiny_dir, tmp_path_factory):
    """configs/trl/dpo.yaml, TRL's key names untouched, on the tiny model: 6 steps, a checkpoint every 2,
    evaluation every 3 on the folder's test split."""
    tmp = tmp_path_factory.mktemp("layout")
    data = _data_folder(tmp / "data")
    config = _tiny_trl_yaml(tmp / "dpo.yaml", tiny_dir, data, tmp / "run", max_length=32, max_prompt_length=16,
                            learning_rate=1e-3, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                            logging_steps=1, eval_steps=3, save_steps=2, max_steps=6, bf16=False,
                            gradient_checkpointing=False, warmup_ratio=0.0)
    _train(config)
    return tmp, config


def test_model_tokenizer_and_card_at_output_dir(trl_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, _ = trl_run
    out = tmp / "run"
    model = AutoModelForCausalLM.from_pretrained(out)            # as a TRL user loads output_dir
    assert AutoTokenizer.from_pretrained(out).eos_token is not None
    final = _weights(out)
    assert _same(final, {k: v for k, v in model.state_dict().items() if k in final})
    assert _same(final, _weights(out / "checkpoint-6"))            # the last step's model
    assert "library_name: transformers" in (out / "README.md").read_text()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert all((out / f"checkpoint-{s}" / "optimizer.pt").is_file() for s in (2, 4, 6))  # each resumable
    assert not (out / "final").exists() and not (out / "checkpoints").exists()


def test_trainer_state_is_transformers_format_with_log_history(trl_run):
    """Read as TRL users read it: TrainerState.load_from_json, log_history's loss / eval_loss entries, the
    closing train_runtime / train_loss entry; the values are metrics.jsonl's."""
    from transformers import TrainerState

    tmp, _ = trl_run
    out = tmp / "run"
    state = TrainerState.load_from_json(str(out / "trainer_state.json"))
    assert (state.global_step, state.max_steps, state.logging_steps, state.eval_steps) == (6, 6, 1, 3)
    records = read_jsonl(out / "metrics.jsonl")
    train_logs = [h for h in state.log_history if "loss" in h]
    assert [h["step"] for h in train_logs] == [1, 2, 3, 4, 5, 6]
    assert [h["loss"] for h in train_logs] == [r["loss"] for r in records]
    assert [h["learning_rate"] for h in train_logs] == [r["lr"] for r in records]
    assert train_logs[0]["rewards/chosen"] == records[0]["rewards/chosen"]
    evals = [h for h in state.log_history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [3, 6]
    assert evals[0]["eval_loss"] == records[2]["eval/loss"] and "eval_rewards/accuracies" in evals[0]
    closing = state.log_history[-1]
    assert closing["step"] == 6 and closing["train_runtime"] > 0
    assert closing["train_loss"] == pytest.approx(sum(r["loss"] for r in records) / 6, rel=1e-6)
    assert state.num_input_tokens_seen > 0
    # a checkpoint's state holds the history up to its step
    at4 = TrainerState.load_from_json(str(out / "checkpoint-4" / "trainer_state.json"))
    assert at4.global_step == 4 and [h["step"] for h in at4.log_history if "loss" in h] == [1, 2, 3, 4]


def test_resume_from_checkpoint_path_and_true(trl_run):
    """`resume_from_checkpoint: RUN/checkpoint-2` continues in a fresh output_dir and ends bit-identical to
    the uninterrupted run (weights, metrics from step 3 on); `--resume_from_checkpoint true` on the
    interrupted run itself continues from its latest checkpoint."""
    tmp, config = trl_run
    out = tmp / "run"
    _train(config, f"output_dir={tmp / 'from2'}", f"resume_from_checkpoint={out / 'checkpoint-2'}")
    assert _same(_weights(tmp / "from2"), _weights(out))
    assert _records(tmp / "from2") == _records(out)[2:]
    summary = json.loads((tmp / "from2" / "summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["status"] == "finished"
    # the same run, cut after checkpoint-4, resumed with TRL's key as a flag
    cut = tmp / "cut"
    shutil.copytree(out, cut)
    shutil.rmtree(cut / "checkpoint-6")
    from isdaa.train.checkpoint import remove_final

    remove_final(cut)
    (cut / "summary.json").unlink()
    _train(config, f"output_dir={cut}", "--resume_from_checkpoint", "true")
    assert _same(_weights(cut), _weights(out)) and _records(cut) == _records(out)
    # an earlier checkpoint of a run with later ones is refused, not silently mixed
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(config), f"output_dir={cut}", "progress=false",
                                  f"resume_from_checkpoint={cut / 'checkpoint-2'}"])
    assert r.exit_code != 0 and "checkpoint-4, checkpoint-6 are later checkpoints of this run" in r.output


def test_save_total_limit_keeps_the_latest(tiny_dir, tmp_path):
    data = _data_folder(tmp_path / "data")
    config = _tiny_trl_yaml(tmp_path / "dpo.yaml", tiny_dir, data, tmp_path / "run", max_length=32,
                            max_prompt_length=16, per_device_train_batch_size=4, save_steps=1, max_steps=5,
                            save_total_limit=2, eval_strategy="no", bf16=False, gradient_checkpointing=False)
    _train(config)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["save_total_limit"] == 2


def test_old_layout_runs_stay_readable(trl_run, tiny_dir, tmp_path):
    """A run written before TRL's layout (checkpoints/step-XXXXXXXX/ with isdaa's state in
    trainer_state.json, final/): listed, its steps read, evaluated by `isdaa eval --run`, and resumed."""
    from isdaa.evaluate.evaluator import checkpoint_info, list_checkpoints
    from isdaa.train import checkpoint as ckpt

    src, config = trl_run
    old = tmp_path / "old"
    shutil.copytree(src / "run", old)
    for step in (2, 4, 6):  # back to the old layout, file for file
        folder = old / "checkpoints" / f"step-{step:08d}"
        folder.parent.mkdir(exist_ok=True)
        (old / f"checkpoint-{step}").rename(folder)
        (folder / "trainer_state.json").write_text((folder / "isdaa_state.json").read_text())
        (folder / "isdaa_state.json").unlink()
    final = old / "final"
    final.mkdir()
    for name in ckpt.read_state(old)["files"]:
        (old / name).rename(final / name)
    (final / "trainer_state.json").write_text(json.dumps({"step": 6, "examples_seen": 24}))
    for name in ("isdaa_state.json", "trainer_state.json"):
        (old / name).unlink()
    listed = list_checkpoints(old, include_final=True)
    assert [p.name for p in listed] == ["step-00000002", "step-00000004", "step-00000006"]
    assert [checkpoint_info(p)["step"] for p in listed] == [2, 4, 6]
    shutil.rmtree(old / "checkpoints" / "step-00000006")
    assert list_checkpoints(old, include_final=True)[-1] == final
    r = CliRunner().invoke(main, ["eval", "--run", str(old), "--ref", str(tiny_dir), "--reward",
                                  "isdaa.lab.keytoken:golden_reward", "--data", str(src / "data" / "test.jsonl"),
                                  "--n-prompts", "2", "--n-samples", "1", "--max-new-tokens", "3", "--no-fit"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (old / "eval").glob("*.json") if p.name != "chosen_rewards.json") == [
        "final.json", "reference.json", "step-00000002.json", "step-00000004.json"]
    # resumed from its latest resumable old checkpoint (step 4): new checkpoints and the final model in
    # TRL's layout, the same weights as the uninterrupted run
    shutil.rmtree(final)
    (old / "summary.json").unlink()
    _train(config, f"output_dir={old}", "--resume")
    assert _same(_weights(old), _weights(src / "run"))
    assert (old / "checkpoint-6").is_dir() and not (old / "final").exists()


def test_eval_run_reads_the_new_layout(trl_run, tiny_dir):
    tmp, _ = trl_run
    run = tmp / "evaluated"
    shutil.copytree(tmp / "run", run)
    r = CliRunner().invoke(main, ["eval", "--run", str(run), "--ref", str(tiny_dir), "--reward",
                                  "isdaa.lab.keytoken:golden_reward", "--data", str(tmp / "data" / "test.jsonl"),
                                  "--n-prompts", "2", "--n-samples", "1", "--max-new-tokens", "3", "--no-fit"])
    assert r.exit_code == 0, r.output
    rows = list(map(json.loads, [p.read_text() for p in sorted((run / "eval").glob("step-*.json"))]))
    assert [row["step"] for row in rows] == [2, 4, 6] and rows[0]["checkpoint"] == str(run / "checkpoint-2")
    assert not (run / "eval" / "final.json").exists()  # the final model is checkpoint-6's step


def test_logged_learning_rate_is_the_rate_each_step_applied(tiny_dir, tmp_path):
    """`lr` (trainer_state's `learning_rate`) is the rate the step's update used, as transformers >= 5 logs it:
    warmup 2 of 6 cosine steps gives lr0 x [0, 1/2, 1, (1 + cos(pi/4)) / 2, 1/2, (1 + cos(3 pi/4)) / 2] (the
    schedule's closed form at steps 0..5), not the next step's rate. Checked on the weights too: with plain SGD
    (no momentum, decay or clipping) step 1 at rate 0 leaves them unchanged."""
    import math

    from test_train import make_cfg

    from isdaa.api import train

    lr0, total, warm = 0.05, 6, 2
    cfg = make_cfg(tiny_dir, tmp_path, batch_size=4, micro_batch_size=4, max_steps=total, save_steps=1,
                   optim={"optimizer": "sgd", "lr": lr0, "warmup_steps": warm, "scheduler": "cosine",
                          "max_grad_norm": 0.0})
    train(cfg)
    want = [lr0 * (k / warm if k < warm else 0.5 * (1 + math.cos(math.pi * (k - warm) / (total - warm))))
            for k in range(total)]
    got = [r["lr"] for r in read_jsonl(f"{cfg.output_dir}/metrics.jsonl")]
    assert got == pytest.approx(want, abs=1e-12)
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert [h["learning_rate"] for h in state["log_history"] if "loss" in h] == pytest.approx(want, abs=1e-12)
    init = load_file(f"{tiny_dir}/model.safetensors")
    after_1 = load_file(str(tmp_path / "run" / "checkpoint-1" / "model.safetensors"))
    after_2 = load_file(str(tmp_path / "run" / "checkpoint-2" / "model.safetensors"))
    assert all(torch.equal(init[k], after_1[k]) for k in init)       # rate 0: no change
    assert any(not torch.equal(after_1[k], after_2[k]) for k in init)  # rate lr0 / 2: a change
