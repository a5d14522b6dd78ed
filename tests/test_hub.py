"""Model card, push to the hub (HfApi mocked: what would be uploaded) and `isdaa merge` of a LoRA run
(the merged model loads with AutoModelForCausalLM and computes what base + adapter computes)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_train import make_cfg

from isdaa.api import train
from isdaa.cli import main


class FakeHub:
    """Records create_repo / upload_folder calls (and the folder's files at upload time)."""

    def __init__(self):
        self.created, self.uploads = [], []

    def install(self, monkeypatch):
        import huggingface_hub

        hub = self

        def create_repo(api, repo_id, **kw):
            hub.created.append((repo_id, kw))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, *, repo_id, folder_path, allow_patterns=None, **kw):
            from pathlib import Path

            from huggingface_hub.utils import filter_repo_objects

            names = [p.name for p in Path(folder_path).iterdir() if p.is_file()]
            kept = filter_repo_objects(names, allow_patterns=allow_patterns)
            files = {n: (Path(folder_path) / n).read_bytes() for n in kept}
            hub.uploads.append({"repo_id": repo_id, "folder": folder_path, "files": files, **kw})
            return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0"})()

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
        return self


def test_run_writes_card_and_pushes_final(tiny_dir, tmp_path, monkeypatch):
    hub = FakeHub().install(monkeypatch)
    cfg = make_cfg(tiny_dir, tmp_path, "pushed", max_steps=2, method="is-dpo", beta=0.05, loss={"is_clip": 0.5},
                   push_to_hub=True, hub_model_id="me/tiny-is-dpo", hub_private=True)
    summary = train(cfg)
    assert hub.created == [("me/tiny-is-dpo", {"private": True, "exist_ok": True, "repo_type": "model"})]
    (up,) = hub.uploads
    assert up["repo_id"] == "me/tiny-is-dpo" and up["folder"] == str(tmp_path / "pushed")  # the output root
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "isdaa_config.yaml",
            "trainer_state.json"} <= set(up["files"])
    # the run's own files stay local: checkpoints, metrics, summary, config.yaml
    assert not any(n.startswith("checkpoint-") or n in ("metrics.jsonl", "summary.json", "config.yaml",
                                                        "isdaa_state.json") for n in up["files"])
    card = up["files"]["README.md"].decode()
    assert card.startswith("---\n") and "library_name: transformers" in card and "- is-dpo" in card
    assert "- Method: `is-dpo` (logistic DAA, base `dpo`), beta = 0.05" in card
    assert "clip eps = 0.5 (log-weights <= 2 eps), self-normalized = False" in card
    assert f"`{tmp_path / 'pushed.jsonl'}` (split `train`)" in card
    loss = summary["final_metrics"]["loss"]
    assert f"| loss | {loss:.4g} |" in card
    assert "isdaa train pref --config isdaa_config.yaml" in card
    # the card's reproduce section holds the resolved config, which loads back to the same config
    from isdaa.config import load_config

    assert load_config(yaml.safe_load(up["files"]["isdaa_config.yaml"])) == cfg


def test_no_push_by_default_but_a_card(tiny_dir, tmp_path, monkeypatch):
    hub = FakeHub().install(monkeypatch)
    train(make_cfg(tiny_dir, tmp_path, "local", max_steps=1))
    assert hub.uploads == [] and (tmp_path / "local" / "README.md").is_file()


def test_lora_run_merges_and_loads(tiny_dir, tmp_path, monkeypatch):
    """TRL's LoRA recipe (configs/trl/dpo-lora.yaml: use_peft, lora_r, lora_alpha), trained through the
    CLI, then `isdaa merge`."""
    pytest.importorskip("peft")
    from peft import PeftModel
    from test_trl_compat import TRL_LORA, _tiny_trl_yaml, pairs_folder
    from transformers import AutoModelForCausalLM

    hub = FakeHub().install(monkeypatch)
    monkeypatch.setenv("ISDAA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data = pairs_folder(tmp_path / "pairs", 16)
    config = _tiny_trl_yaml(tmp_path / "lora.yaml", tiny_dir, data, tmp_path / "lora", source=TRL_LORA,
                            max_steps=3, learning_rate=5e-2, per_device_train_batch_size=2,
                            gradient_accumulation_steps=2, lora_r=4, lora_alpha=8, max_length=32)
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(config), "progress=false",
                                  "data.max_prompt_length=16"])
    assert r.exit_code == 0, r.output
    resolved = yaml.safe_load((tmp_path / "lora" / "config.yaml").read_text())
    assert resolved["model"]["lora"] == {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": None}
    final = tmp_path / "lora"  # the adapter at the output root
    assert (final / "adapter_model.safetensors").is_file() and not (final / "model.safetensors").exists()
    assert "library_name: peft" in (final / "README.md").read_text()
    out = tmp_path / "merged"
    r = CliRunner().invoke(main, ["merge", str(tmp_path / "lora"), "--out", str(out), "--push-to-hub", "me/merged"])
    assert r.exit_code == 0, r.output
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k in merged.state_dict())
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ids = torch.tensor([[2, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(final)).eval()(ids).logits
        got, plain = merged(ids).logits, base(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # merged == base + adapter
    assert (got - plain).abs().max() > 1e-3                       # and the adapter did train
    card = (out / "README.md").read_text()
    assert "LoRA adapter merged into the base weights" in card and "library_name: transformers" in card
    assert hub.uploads[-1]["repo_id"] == "me/merged" and "model.safetensors" in hub.uploads[-1]["files"]
    assert json.loads(r.output.strip().splitlines()[-1])["merged"] == str(out)


def test_merge_refuses_a_folder_without_adapter(tiny_dir, tmp_path):
    r = CliRunner().invoke(main, ["merge", str(tiny_dir), "--out", str(tmp_path / "m")])
    assert r.exit_code != 0 and "no LoRA adapter (adapter_config.json)" in r.output


def test_merge_refuses_a_pickle_adapter(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"}))
    (adapter / "adapter_model.bin").write_bytes(b"pickle")
    r = CliRunner().invoke(main, ["merge", str(adapter), "--out", str(tmp_path / "m")])
    assert r.exit_code != 0 and "no adapter_model.safetensors (pickle adapters are not loaded)" in r.output
