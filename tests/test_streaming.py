"""`data.streaming` (TRL's dataset_streaming): preference training reads rows as it consumes them,
tokenized on the fly, max_steps x batch_size rows and no more -- provably: what lies past them in the
same file or in a later file of a glob is garbage that would fail the run if read."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_data_loading import datasets_cache  # noqa: F401 -- fixture: a per-test datasets cache
from test_train import make_cfg

from isdaa.api import train
from isdaa.data import DataError
from isdaa.io import read_jsonl
from isdaa.train.callbacks import StopAtStep

VOLATILE = {"tokens_per_s", "elapsed_s"}


def pairs(n, start=0):
    return [{"prompt": f"w{i % 50} w{(i + 7) % 50}", "chosen": f"good yes w{i % 40}", "rejected": f"bad no w{i % 30}"}
            for i in range(start, start + n)]


def lines(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def streamed(tiny_dir, tmp_path, name, train_spec, **over):
    """make_cfg (it writes tmp_path/<name>.jsonl, unused here) with a streamed training spec."""
    data = {"train": train_spec, "streaming": True, "max_length": 32, "max_prompt_length": 16}
    return make_cfg(tiny_dir, tmp_path, name, data=data, ref_logps="on_the_fly", **over)


def records(cfg):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_jsonl(f"{cfg.output_dir}/metrics.jsonl")]


def test_a_glob_is_read_no_further_than_the_run_needs(tiny_dir, tmp_path):
    """4 steps x 8 pairs = 32 rows: a.jsonl holds 24, b.jsonl 8 more, c.jsonl is not JSON at all (read, it
    would fail the run); rows are taken in file order and tokenized per step."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text(lines(pairs(24)))
    (data / "b.jsonl").write_text(lines(pairs(8, 24)))
    (data / "c.jsonl").write_text("this is not JSON\n" * 10)
    cfg = streamed(tiny_dir, tmp_path, "glob", str(data / "*.jsonl"), max_steps=4)
    summary = train(cfg)
    assert summary["status"] == "finished" and summary["data/rows"] == 32
    assert [r["examples"] for r in records(cfg)] == [8, 16, 24, 32]
    # a fifth step would need c.jsonl: the same run with max_steps 5 reads it and names it
    with pytest.raises(DataError, match=r"c.jsonl: line 1 is not valid JSON"):
        train(streamed(tiny_dir, tmp_path, "glob5", str(data / "*.jsonl"), max_steps=5))


def test_one_large_file_is_read_no_further_than_the_run_needs(tiny_dir, tmp_path):
    """A 12 MB JSONL (past datasets' 10 MB read chunk) whose last line is not JSON: a 2-step run reads
    only its first chunk and finishes."""
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        while f.tell() < 12 << 20:
            f.write(lines(pairs(2000)))
        f.write("{broken\n")
    cfg = streamed(tiny_dir, tmp_path, "big", str(path), max_steps=2)
    assert train(cfg)["status"] == "finished"
    assert train(streamed(tiny_dir, tmp_path, "big-slice", f"{path}", max_steps=1,
                          **{"data.train_split": "train[16:]"}))["data/rows"] == 8


def test_streamed_resume_is_exact_and_bad_rows_name_their_line(tiny_dir, tmp_path):
    (tmp_path / "d.jsonl").write_text(lines(pairs(48)))
    full = streamed(tiny_dir, tmp_path, "full", str(tmp_path / "d.jsonl"), max_steps=5)
    part = streamed(tiny_dir, tmp_path, "part", str(tmp_path / "d.jsonl"), max_steps=5)
    train(full)
    assert train(part, callbacks=[StopAtStep(2)])["status"] == "stopped"
    assert train(part, resume=True)["resumed_from_step"] == 2
    assert records(full) == records(part)
    wf, wp = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    assert all(torch.equal(wf[k], wp[k]) for k in wf)
    bad = pairs(24)
    bad[13]["rejected"] = 5
    (tmp_path / "broken.jsonl").write_text(lines(bad[:10]) + "\n" + lines(bad[10:]))  # a blank line 11
    with pytest.raises(DataError, match=r"broken.jsonl: line 15: field 'rejected' must be a string"):
        train(streamed(tiny_dir, tmp_path, "bad", str(tmp_path / "broken.jsonl"), max_steps=3))
    assert [r["step"] for r in read_jsonl(tmp_path / "bad" / "metrics.jsonl")] == [1]  # failed at step 2


def test_streaming_needs_max_steps_and_ends_clearly(tiny_dir, tmp_path):
    (tmp_path / "d.jsonl").write_text(lines(pairs(12)))
    with pytest.raises(ValueError, match=r"data.streaming reads the rows as training consumes them: set max_steps"):
        train(streamed(tiny_dir, tmp_path, "noend", str(tmp_path / "d.jsonl")))
    with pytest.raises(DataError, match=r"ran out after 12 rows, at step 2; max_steps=3 x batch_size=8 needs 24"):
        train(streamed(tiny_dir, tmp_path, "short", str(tmp_path / "d.jsonl"), max_steps=3))
