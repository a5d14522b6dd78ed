"""Loading through `datasets`: globs and mixtures (each row keeps its own file and line for errors),
TRL's `datasets:` entries, local dataset folders, streaming and num_proc."""

from __future__ import annotations

import json

import pytest

from isdaa.data import DataError, load_rows, tokenize_pref


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pairs(tag, n):
    return [{"prompt": f"w{i}", "chosen": f"good {tag}{i}", "rejected": f"bad {tag}{i}"} for i in range(n)]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_glob_concatenates_sorted_files_and_errors_name_the_right_file(tmp_path, tok):
    write(tmp_path / "b.jsonl", pairs("b", 2))
    a = pairs("a", 3)
    a[2]["chosen"] = 7
    write(tmp_path / "a.jsonl", a)
    rows = load_rows(str(tmp_path / "*.jsonl"))
    assert [r["chosen"] for r in rows] == ["good a0", "good a1", 7, "good b0", "good b1"]
    with pytest.raises(DataError, match=rf"{tmp_path / 'a.jsonl'}: line 3: field 'chosen' must be a string"):
        tokenize_pref(rows, tok, 32, 16)
    bad_b = pairs("b", 2)
    bad_b[1].pop("rejected")
    write(tmp_path / "b.jsonl", bad_b)
    a[2]["chosen"] = "good a2"
    write(tmp_path / "a.jsonl", a)
    with pytest.raises(DataError, match=rf"{tmp_path / 'b.jsonl'}: line 2: missing field 'rejected'"):
        tokenize_pref(load_rows(str(tmp_path / "*.jsonl")), tok, 32, 16)
    assert len(load_rows(str(tmp_path / "*.jsonl"), limit=4)) == 4
    with pytest.raises(FileNotFoundError, match="no dataset file matches"):
        load_rows(str(tmp_path / "*.parquet"))


def test_mixture_with_trl_entries(tmp_path):
    write(tmp_path / "x.jsonl", pairs("x", 3))
    write(tmp_path / "y.json.jsonl", pairs("y", 2))
    rows = load_rows([str(tmp_path / "x.jsonl"),
                      {"path": "json", "data_files": str(tmp_path / "y.json.jsonl"), "columns": ["prompt", "chosen"]}])
    assert [r["chosen"] for r in rows] == ["good x0", "good x1", "good x2", "good y0", "good y1"]
    assert set(rows[3]) == {"prompt", "chosen"} and "rejected" in rows[0]
    assert rows.where[0] == f"{tmp_path / 'x.jsonl'}: line 1"
    assert rows.where[4] == f"json:{tmp_path / 'y.json.jsonl'}[train]: row 1"
    with pytest.raises(DataError, match=r"not \['fraction'\]"):
        load_rows([{"path": "json", "fraction": 0.5}])


def test_dataset_folder_streaming_and_limit(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write(folder / "train.jsonl", pairs("t", 6))
    full = load_rows(str(folder))
    assert [r["chosen"] for r in full] == [f"good t{i}" for i in range(6)]
    assert load_rows(str(folder), limit=2) == full[:2]
    assert load_rows(str(folder), streaming=True, limit=3) == full[:3]
    assert load_rows(str(folder), streaming=True) == full


def test_streaming_and_num_proc_reach_load_dataset(monkeypatch):
    import datasets

    calls, pulled = [], []

    class Stream:
        def __init__(self, rows):
            self.rows = rows

        def __iter__(self):
            for r in self.rows:
                pulled.append(r)
                yield r

    def fake_load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        if kw.get("streaming"):
            return Stream(pairs("s", 10))
        return datasets.Dataset.from_list(pairs("h", 10))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_rows("org/prefs", "train_prefs", "default", limit=3, streaming=True)
    assert [r["chosen"] for r in rows] == ["good s0", "good s1", "good s2"]
    assert calls[0] == ("org/prefs", "default", {"split": "train_prefs", "streaming": True})
    assert len(pulled) == 3  # a limited stream is read no further than its limit
    rows = load_rows("org/prefs", "train_prefs[2:4]", "default", streaming=True)  # a slice of a stream: skip/take
    assert [r["chosen"] for r in rows] == ["good s2", "good s3"] and calls[-1][2]["split"] == "train_prefs"
    rows = load_rows("org/prefs", limit=4, num_proc=2)
    assert len(rows) == 4 and calls[-1] == ("org/prefs", None, {"split": "train", "num_proc": 2})
    assert rows.source == "org/prefs[train]"


def test_config_wires_data_options_and_trl_mixture(tmp_path):
    from isdaa.config import load_config

    cfg = load_config({"model_name_or_path": "m", "output_dir": "o", "dataset_name": "org/prefs",
                       "dataset_streaming": True, "dataset_num_proc": 4})
    assert (cfg.data.train, cfg.data.streaming, cfg.data.num_proc) == ("org/prefs", True, 4)
    mix = [{"path": "org/a", "split": "train"}, {"path": "org/b", "name": "x"}]
    cfg = load_config({"model_name_or_path": "m", "output_dir": "o", "datasets": mix, "streaming": True})
    assert cfg.data.train == mix and cfg.data.streaming is True
