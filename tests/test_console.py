"""The console of `isdaa train`, as a TRL user reads TRL's: a dict per logging step (the log_history
entry), eval dicts, the closing dict, one progress bar at a time (no cursor-up escapes), isdaa's warnings
blamed on the user's config, TRL's defaults that differ listed once, bf16 measured slow on a CPU said so,
and a hub push that fails said in one line with the model kept."""

from __future__ import annotations

import ast
import json

import pytest
from click.testing import CliRunner
from test_trl_compat import pairs_folder

from isdaa.cli import main


@pytest.fixture(autouse=True)
def one_process(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ISDAA_CACHE", str(tmp_path / "cache"))


def _yaml(tmp_path, tiny_dir, **extra):
    data = pairs_folder(tmp_path / "data")
    cfg = {"model_name_or_path": str(tiny_dir), "dataset_name": str(data), "output_dir": str(tmp_path / "run"),
           "learning_rate": 1e-3, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
           "max_steps": 4, "logging_steps": 2, "eval_strategy": "steps", "eval_steps": 4, "max_length": 32,
           "bf16": False, "gradient_checkpointing": False, "report_to": "none", **extra}
    path = tmp_path / "dpo.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def _dicts(text: str) -> list[dict]:
    return [ast.literal_eval(line) for line in text.splitlines() if line.startswith("{'")]


def test_console_like_trls(tiny_dir, tmp_path):
    config = _yaml(tmp_path, tiny_dir)
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(config), "--method", "is-dpo"])
    assert r.exit_code == 0, r.output
    out, err = r.stdout, r.stderr
    logs = _dicts(out)
    train_logs = [d for d in logs if "loss" in d]
    evals = [d for d in logs if "eval_loss" in d]
    assert [d["epoch"] for d in train_logs] == ["0.5", "1"]          # one dict per logging step (2 and 4)
    assert list(train_logs[0])[:3] == ["loss", "grad_norm", "learning_rate"] and "is/weight_mean" in train_logs[0]
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    history = [h for h in state["log_history"] if "loss" in h]
    assert [float(d["loss"]) for d in train_logs] == [float(f"{h['loss']:.4g}") for h in history]
    assert len(evals) == 1 and list(evals[0])[0] == "eval_loss"
    assert "train_runtime" in logs[-1] and "train_loss" in logs[-1]  # the closing dict
    assert out.count("isdaa defaults that differ from TRL's") == 1 and "optim.scheduler cosine" in out
    assert "\x1b[A" not in err and "\x1b[A" not in out                # one bar at a time: no cursor-up
    # isdaa's warnings name the user's config, not isdaa's source file
    assert f"{config}: warning: warmup (100 steps) >= the run's 4 steps" in err
    assert "isdaa/config/" not in err and "UserWarning" not in err
    # plain DPO: no importance-weight columns (they would read w=1, ess=1)
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(config), "--overwrite", "warmup_steps=0"])
    assert r.exit_code == 0, r.output
    assert not any(k.startswith("is/") for d in _dicts(r.stdout) for k in d)
    assert not any(k.startswith("is/") for k in json.loads(r.stdout.strip().splitlines()[-1]))
    assert "optim.warmup_steps" not in r.stdout  # set by the user: not a default any more


def test_a_failed_push_is_one_line_and_the_model_stays(tiny_dir, tmp_path, monkeypatch):
    import huggingface_hub

    def no_network(api, repo_id, **kw):
        raise ConnectionError("Failed to resolve 'huggingface.co' ([Errno -3] Temporary failure in name resolution)"
                              "\n" + "more traceback-like noise\n" * 50)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_network)
    config = _yaml(tmp_path, tiny_dir, push_to_hub=True, hub_model_id="me/tiny", warmup_steps=0)
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(config)])
    assert r.exit_code == 1
    line = next(x for x in r.stderr.splitlines() if "push_to_hub" in x)
    assert line == (f"{config}: warning: push_to_hub to me/tiny failed (ConnectionError: Failed to resolve "
                    "'huggingface.co' ([Errno -3] Temporary failure in name resolution)); the model is saved in "
                    f"{tmp_path / 'run'}: push it later with `huggingface-cli upload me/tiny {tmp_path / 'run'}`")
    assert "Traceback" not in r.output and "noise" not in r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["push_to_hub"] == "failed"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and "ConnectionError" in summary["push_to_hub"]["error"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "run")  # saved before the push


def test_bf16_on_a_cpu_that_computes_it_slowly_is_warned_with_the_measurement(monkeypatch, tiny_dir, tmp_path):
    from isdaa.train import notices

    ratio = notices.bf16_matmul_ratio(n=64, reps=2)  # the real measurement runs and is a positive ratio
    assert ratio > 0
    monkeypatch.setattr(notices, "bf16_matmul_ratio", lambda *a, **k: 7.2)
    monkeypatch.setattr(notices, "cpu_bf16_flags", lambda: [])
    config = _yaml(tmp_path, tiny_dir, bf16=True, max_steps=1, warmup_steps=0, eval_strategy="no")
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(config)])
    assert r.exit_code == 0, r.output
    assert (f"{config}: warning: bf16 on this CPU is slow: a 256x256 matmul took 7.2x as long in bf16 as in float32 "
            "(measured now; it lacks avx512_bf16 / amx_bf16); set mixed_precision: no (TRL: bf16: false)") in r.stderr
    monkeypatch.setattr(notices, "bf16_matmul_ratio", lambda *a, **k: 0.5)  # a CPU with fast bf16: nothing said
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(config), "--overwrite"])
    assert r.exit_code == 0 and "bf16 on this CPU" not in r.stderr
