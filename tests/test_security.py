"""Security: no remote code unless asked, no unpickling of model files, secrets only from the
environment and in no artifact, no shell anywhere in the package."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from isdaa.cli import main
from isdaa.config import load_config, to_yaml

SRC = Path(__file__).resolve().parents[1] / "src" / "isdaa"
SECRET = "sk-fake-TOPSECRET-0123456789"
# model loaders outside train/ (other owners) still to switch to use_safetensors=True
PENDING_SAFETENSORS: set[str] = set()


def _sources():
    return {p.relative_to(SRC).as_posix(): p.read_text(encoding="utf-8") for p in sorted(SRC.rglob("*.py"))}


def test_no_shell_or_code_execution_in_the_package():
    """Paths from configs and datasets are never executed or interpolated into shell commands."""
    pattern = re.compile(r"\bsubprocess\b|os\.system|os\.popen|os\.exec|shell\s*=\s*True|"
                         r"(?<![.\w])eval\(|(?<![.\w])exec\(|pickle\.loads?\(|\bpty\b")
    hits = [f"{name}:{i}: {line.strip()}" for name, text in _sources().items()
            for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_every_torch_load_is_weights_only_and_no_remote_code_is_forced():
    for name, text in _sources().items():
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{name}: {call}"
        assert not re.search(r"trust_remote_code\s*=\s*True", text), name
    loaders = {name for name, text in _sources().items()
               if re.search(r"(AutoModel\w*|Model)\.from_pretrained\(", text) and "use_safetensors=True" not in text}
    assert loaders <= PENDING_SAFETENSORS, loaders - PENDING_SAFETENSORS


def test_trust_remote_code_is_off_unless_set(tiny_dir, monkeypatch):
    import transformers

    from isdaa.train.models import load_causal_lm, load_tokenizer

    cfg = load_config({"model": {"name_or_path": str(tiny_dir)}, "data": {"train": "d.jsonl"}, "output_dir": "o"})
    assert cfg.model.trust_remote_code is False
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_causal_lm(cfg.model, load_tokenizer(cfg.model))
    assert seen[0]["trust_remote_code"] is False and seen[0]["use_safetensors"] is True


def test_pickle_checkpoint_is_refused_and_never_unpickled(tiny_dir, tmp_path):
    """A folder with pytorch_model.bin and no safetensors: a clear refusal; the pickle's payload never runs."""
    import pickle
    import shutil

    model_dir = tmp_path / "pickled"
    shutil.copytree(tiny_dir, model_dir)
    (model_dir / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    (tmp_path / "d.jsonl").write_text(json.dumps({"prompt": "w1", "chosen": "good", "rejected": "bad"}) + "\n")
    cfg = {"model": {"name_or_path": str(model_dir)}, "data": {"train": str(tmp_path / "d.jsonl"), "max_length": 32,
           "max_prompt_length": 16}, "output_dir": str(tmp_path / "run"), "batch_size": 1, "micro_batch_size": 1,
           "max_steps": 1, "progress": False, "mixed_precision": "no"}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(tmp_path / "c.yaml")])
    assert r.exit_code == 1 and "holds pickle weights (pytorch_model.bin) and no .safetensors file" in r.output
    assert "Traceback" not in r.output and not marker.exists()


class _Judge(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        ok = self.headers.get("Authorization") == f"Bearer {SECRET}"
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"choices": [{"message": {"content": "Comparison: fine.\nMore helpful: A"}}]} if ok
                          else {"error": "bad key"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_api_key_appears_in_no_artifact(tiny_dir, tmp_path, monkeypatch):
    """A run that used a fake key (the judge, a training run with the key in the environment, a failing
    judge call): grep every file written for the key; it only ever travels in the request header."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    monkeypatch.setenv("ISDAA_JUDGE_KEY", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    try:
        (tmp_path / "data.jsonl").write_text("".join(json.dumps({"prompt": f"w{i}", "chosen": "good yes",
                                                                 "rejected": "bad no"}) + "\n" for i in range(4)))
        (tmp_path / "samples.jsonl").write_text("".join(json.dumps({"prompt_idx": i, "response": "yes"}) + "\n"
                                                        for i in range(4)))
        judge = ["judge", "--samples", str(tmp_path / "samples.jsonl"), "--data", str(tmp_path / "data.jsonl"),
                 "--base-url", url, "--model", "m", "--api-key-env", "ISDAA_JUDGE_KEY", "--out",
                 str(tmp_path / "judge.json"), "--workers", "1", "--max-retries", "0"]
        r = CliRunner().invoke(main, judge)
        assert r.exit_code == 0 and SECRET not in r.output, r.output
        # a wrong key: the failures are recorded, the (wrong) key is not
        monkeypatch.setenv("ISDAA_JUDGE_KEY", "wrong-" + SECRET)
        r = CliRunner().invoke(main, [*judge[:-6], "--out", str(tmp_path / "judge-bad.json"), "--cache-dir",
                                      str(tmp_path / "bad-cache"), "--workers", "1", "--max-retries", "0"])
        assert "HTTP 401" in (tmp_path / "judge-bad.json").read_text() and SECRET not in r.output
        # a training run with keys in the environment, and its resolved config
        cfg = load_config({"model": {"name_or_path": str(tiny_dir)},
                           "data": {"train": str(tmp_path / "data.jsonl"), "max_length": 32, "max_prompt_length": 16},
                           "output_dir": str(tmp_path / "run"), "batch_size": 2, "micro_batch_size": 2,
                           "max_steps": 1, "progress": False, "num_threads": 1, "mixed_precision": "no",
                           "ref_cache_dir": str(tmp_path / "cache")})
        (tmp_path / "c.yaml").write_text(to_yaml(cfg))
        r = CliRunner().invoke(main, ["train", "pref", "--config", str(tmp_path / "c.yaml")])
        assert r.exit_code == 0 and SECRET not in r.output, r.output
    finally:
        srv.shutdown()
        srv.server_close()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10 and any(p.name == "judge.json" for p in files)
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked


@pytest.mark.parametrize("name", ["train/checkpoint.py", "train/reference.py"])
def test_resume_state_loads_with_weights_only(name):
    text = (SRC / name).read_text()
    assert "torch.load(" in text and text.count("torch.load(") == text.count("weights_only=True)")
