"""Faults lose nothing: non-finite steps are skipped, counted and bounded; checkpoints and caches are
trusted only when complete and intact; the same config and seed give bit-identical results on CPU."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from isdaa.api import train
from isdaa.config import load_config
from isdaa.io import atomic_write_text, read_jsonl
from isdaa.train import checkpoint as ckpt
from isdaa.train.loop import NonFiniteError, epoch_permutation
from isdaa.train.pref import PrefTask

VOLATILE = {"tokens_per_s", "elapsed_s"}


def rows(n=16):
    return [{"prompt": f"w{i} w{i + 1}", "chosen": f"good yes w{i}", "rejected": f"bad no w{i}"} for i in range(n)]


def make_cfg(tiny_dir, tmp_path, name, **over):
    data = tmp_path / "train.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    base = {"model": {"name_or_path": str(tiny_dir)},
            "data": {"train": str(data), "max_length": 32, "max_prompt_length": 16},
            "optim": {"lr": 3e-3, "warmup_steps": 0}, "output_dir": str(tmp_path / name), "method": "is-dpo",
            "batch_size": 4, "micro_batch_size": 4, "max_steps": 4, "logging_steps": 1, "progress": False,
            "num_threads": 1, "mixed_precision": "no", "seed": 0, "ref_cache_dir": str(tmp_path / "cache")}
    return load_config(base, [f"{k}={json.dumps(v)}" for k, v in over.items()])


def metrics(cfg):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_jsonl(f"{cfg.output_dir}/metrics.jsonl")]


def weights(path):
    return load_file(f"{path}/model.safetensors")


class _NanGrad(torch.autograd.Function):
    """Identity forward; NaN gradient backward (a finite loss with a poisoned gradient)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def poison(monkeypatch, bad_calls, kind="loss"):
    """Make PrefTask.loss non-finite (loss, or only the gradient) on the given 1-based training calls."""
    original, calls = PrefTask.loss, {"n": 0}

    def loss(self, model, batch):
        loss_sum, m, w = original(self, model, batch)
        if model.training:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                loss_sum = loss_sum * float("nan") if kind == "loss" else _NanGrad.apply(loss_sum)
        return loss_sum, m, w

    monkeypatch.setattr(PrefTask, "loss", loss)


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_step_is_skipped_and_counted(tiny_dir, tmp_path, monkeypatch, kind):
    poison(monkeypatch, {2}, kind)
    cfg = make_cfg(tiny_dir, tmp_path, f"skip-{kind}", save_steps=1)
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["nonfinite_steps"] == 1 and summary["step"] == 4
    recs = metrics(cfg)
    assert [r["nonfinite_steps"] for r in recs] == [0, 1, 1, 1]
    if kind == "loss":
        assert math.isnan(recs[1]["loss"])
    else:
        assert math.isfinite(recs[1]["loss"]) and not math.isfinite(recs[1]["grad_norm"])
    out = tmp_path / f"skip-{kind}"
    w1, w2, w3 = (weights(out / f"checkpoint-{s}") for s in (1, 2, 3))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)             # the skipped step changed nothing
    assert not all(torch.equal(w2[k], w3[k]) for k in w2)         # training went on
    final = weights(out)  # the final model at the output root
    assert all(torch.isfinite(v).all() for v in final.values())   # no NaN reached the weights


def test_k_nonfinite_steps_in_a_row_stop_with_the_batch_named(tiny_dir, tmp_path, monkeypatch):
    poison(monkeypatch, set(range(2, 100)))
    cfg = make_cfg(tiny_dir, tmp_path, "stop", max_nonfinite_steps=2, save_steps=1)
    with pytest.raises(NonFiniteError) as info:
        train(cfg)
    msg = str(info.value)
    lines = [i + 1 for i in epoch_permutation(0, 0, 16)[8:12].tolist()]  # the batch of step 3 (1-based lines)
    expected = f"{cfg.data.train}: " + ", ".join(f"line {n}" for n in lines)
    assert "2 steps in a row (max_nonfinite_steps=2); stopped at step 3" in msg and expected in msg, msg
    summary = json.loads((tmp_path / "stop" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["nonfinite_steps"] == 2 and summary["stop_reason"] == msg
    assert metrics(cfg)[-1]["step"] == 3
    for path in (tmp_path / "stop").glob("checkpoint-*"):
        assert all(torch.isfinite(v).all() for v in weights(path).values())
    # the failed run is not "finished": a rerun without --resume / --overwrite is refused
    with pytest.raises(FileExistsError, match="unfinished run"):
        train(cfg)


def test_nonfinite_stop_is_one_clean_cli_error(tiny_dir, tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    from isdaa.cli import main
    from isdaa.config import to_dict

    poison(monkeypatch, set(range(1, 100)))
    cfg = make_cfg(tiny_dir, tmp_path, "cli-stop")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(tmp_path / "c.yaml")])
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]  # warnings may come first
    assert r.exit_code == 1 and len(errors) == 1
    assert errors[0].startswith("Error: non-finite loss or gradient for 3 steps in a row")
    assert "Traceback" not in r.output


def test_incomplete_or_truncated_checkpoints_are_not_resumed(tiny_dir, tmp_path):
    full = make_cfg(tiny_dir, tmp_path, "full", max_steps=6)
    part = make_cfg(tiny_dir, tmp_path, "part", max_steps=6, save_steps=2, resume_state_keep=3)
    train(full), train(part)
    out = tmp_path / "part"
    # simulate kills: the run never finished, step 6 lost its marker, step 4 has a truncated optimizer.pt,
    # and a temporary folder of a cut write lies around
    ckpt.remove_final(out)
    (out / "summary.json").unlink()
    (out / "checkpoint-6" / "isdaa_state.json").unlink()
    opt = out / "checkpoint-4" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[: opt.stat().st_size // 2])
    shutil.copytree(out / "checkpoint-2", out / ".checkpoint-8.tmp")
    seen = []
    assert ckpt.latest_resumable(out, report=seen.append).name == "checkpoint-2"
    assert "checkpoint-6: no isdaa_state.json" in seen[0] and "optimizer.pt has" in seen[1], seen
    summary = train(part, resume=True)
    assert summary["resumed_from_step"] == 2 and summary["status"] == "finished"
    assert metrics(part) == metrics(full)
    assert not (out / ".checkpoint-8.tmp").exists()
    wf, wp = weights(tmp_path / "full"), weights(out)
    assert all(torch.equal(wf[k], wp[k]) for k in wf)


def test_corrupt_reference_cache_is_detected_and_rebuilt(tiny_dir, tmp_path):
    a = make_cfg(tiny_dir, tmp_path, "a", max_steps=1)
    assert train(a)["ref_cache_hits"] == 0
    entry = next((tmp_path / "cache").glob("*.pt"))
    good = entry.read_bytes()
    original = torch.load(entry, weights_only=True)
    data = torch.load(entry, weights_only=True)
    data["ref_chosen_logps"][0] += 1.0                        # bits altered, old hash kept
    torch.save(data, entry)
    for corrupt in (None, good[: len(good) // 3]):            # altered values, then a truncated file
        if corrupt is not None:
            entry.write_bytes(corrupt)
        b = make_cfg(tiny_dir, tmp_path, "b", max_steps=1)
        assert train(b, overwrite=True)["ref_cache_hits"] == 0  # rebuilt, not trusted
        assert metrics(b) == metrics(a)
        rebuilt = torch.load(entry, weights_only=True)       # the rebuilt entry holds the original values
        assert all(torch.equal(rebuilt[k], original[k]) for k in ("ref_chosen_logps", "ref_rejected_logps"))
    assert train(make_cfg(tiny_dir, tmp_path, "c", max_steps=1))["ref_cache_hits"] == 1


def test_same_config_and_seed_are_bit_identical(tiny_dir, tmp_path):
    one, two = (make_cfg(tiny_dir, tmp_path, name, max_steps=3) for name in ("one", "two"))
    train(one), train(two)
    assert metrics(one) == metrics(two)
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_atomic_write_leaves_the_old_file_on_a_crash(tmp_path):
    from isdaa.io import atomic_path

    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_metrics_log_cut_by_a_kill_is_read_up_to_the_last_whole_line(tmp_path):
    from isdaa.io import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n{"step": 2, "note": "caf' + "\u00e9".encode()[:1])  # cut mid-character
    assert read_jsonl(path, tolerate_partial_tail=True) == [{"step": 1}]
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        read_jsonl(path)
    path.write_bytes(b'{"step": 1}\n{"step": 2, "lo')                                 # cut mid-record
    assert read_jsonl(path, tolerate_partial_tail=True) == [{"step": 1}]
