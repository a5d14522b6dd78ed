"""Every dataset through `datasets`: local json / jsonl / parquet / csv and globs (`load_dataset`),
`save_to_disk` folders (`load_from_disk`), split slices honoured everywhere, and row errors that still
name the file, row and field."""

from __future__ import annotations

import json

import pytest
from test_data_loading import datasets_cache  # noqa: F401 -- autouse fixture: a per-test datasets cache
from test_train import write_jsonl

from isdaa.data import DataError, load_rows, tokenize_pref


def pairs(n, tag="p"):
    return [{"prompt": f"w{i % 50} w{(i + 1) % 50}", "chosen": f"good yes {tag}{i}", "rejected": f"bad no {tag}{i}"}
            for i in range(n)]




def test_split_slices_of_a_local_file_are_honoured(tmp_path):
    """`train[:10]` of a 128-row file is its first 10 rows (it was all 128, without a word); percentages
    round as datasets rounds them; slices concatenate."""
    path = write_jsonl(tmp_path / "d.jsonl", pairs(128))
    full = load_rows(path)
    assert len(full) == 128
    assert load_rows(path, "train[:10]") == full[:10]
    assert len(load_rows(path, "train[:33%]")) == 42
    assert load_rows(path, "train[100:]") == full[100:]
    assert load_rows(path, "train[:2]+train[-2:]") == full[:2] + full[-2:]
    assert load_rows(path, "train[:10]", limit=3) == full[:3]
    rows = load_rows(path, "train[5:8]")
    assert [rows.where[i] for i in range(3)] == [f"{path}: line {n}" for n in (6, 7, 8)]   # lines, past the slice
    assert load_rows(path, "train[5:8]", streaming=True) == full[5:8]
    with pytest.raises(DataError, match=r"a streamed dataset takes one slice with absolute bounds"):
        load_rows(path, "train[:10%]", streaming=True)


def test_save_to_disk_folders_load(tmp_path, tok):
    """A `save_to_disk` Dataset (split `train`) and DatasetDict (its splits, sliced); a bad row names the
    folder, split, row and field."""
    import datasets

    rows = pairs(12)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    assert load_rows(str(tmp_path / "one")) == rows
    assert load_rows(str(tmp_path / "one"), "train[2:4]") == rows[2:4]
    with pytest.raises(DataError, match=r"split 'test' cannot be read"):
        load_rows(str(tmp_path / "one"), "test")
    bad = [*pairs(3, "t")]
    bad[1]["chosen"] = "   "
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(bad)}).save_to_disk(str(tmp_path / "dict"))
    assert load_rows(str(tmp_path / "dict"), "train[:5]") == rows[:5]
    with pytest.raises(DataError, match=rf"{tmp_path / 'dict'}\[test\]: row 1: field 'chosen' is empty"):
        tokenize_pref(load_rows(str(tmp_path / "dict"), "test"), tok, 32, 16)


def test_csv_parquet_json_and_globs(tmp_path, tok):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pairs(6)
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:]), tmp_path / "b.parquet")
    assert load_rows(str(tmp_path / "*.parquet")) == rows
    assert load_rows(str(tmp_path / "*.parquet"), "train[2:4]").where[1] == f"{tmp_path / 'b.parquet'}: row 0"
    import csv

    with open(tmp_path / "d.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert load_rows(str(tmp_path / "d.csv")) == rows
    (tmp_path / "cols.json").write_text(json.dumps({k: [r[k] for r in rows] for k in rows[0]}))
    (tmp_path / "data.json").write_text(json.dumps({"data": rows}))
    (tmp_path / "list.json").write_text(json.dumps(rows))
    for name in ("cols.json", "data.json", "list.json"):
        assert load_rows(str(tmp_path / name)) == rows, name
    assert len(tokenize_pref(load_rows(str(tmp_path / "d.csv")), tok, 32, 16)) == 6


def test_absent_key_and_null_stay_distinct(tmp_path, tok):
    """datasets gives every row every column (null where a row lacks the key): the row as written is read
    back, so an implicit-prompt row among explicit ones stays implicit and `"prompt": null` an error."""
    rows = [{"prompt": "w1", "chosen": " good", "rejected": " bad"},
            {"chosen": "w2 w3 good", "rejected": "w2 w3 bad"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    loaded = load_rows(path)
    assert loaded == rows and "prompt" not in loaded[1]
    ex = tokenize_pref(loaded, tok, 32, 16)
    assert len(ex) == 2 and tok.decode(ex[1]["prompt_ids"]).split()[-2:] == ["w2", "w3"]
    path = write_jsonl(tmp_path / "null.jsonl", [rows[0], {**rows[1], "prompt": None}])
    with pytest.raises(DataError, match=r"null.jsonl: line 2: .*null"):
        tokenize_pref(load_rows(path), tok, 32, 16)


def test_trainer_reads_a_slice_and_a_saved_folder(tiny_dir, tmp_path):
    """TRL's dataset_train_split: train[:16] trains on those 16 rows; dataset_name a save_to_disk folder."""
    import datasets
    from test_train import make_cfg

    from isdaa.api import train

    path = write_jsonl(tmp_path / "big.jsonl", pairs(64))
    cfg = make_cfg(tiny_dir, tmp_path, "sliced", max_steps=2, data={"train": path, "train_split": "train[:16]",
                                                                     "max_length": 32, "max_prompt_length": 16})
    assert train(cfg)["data/rows"] == 16
    datasets.Dataset.from_list(pairs(16)).save_to_disk(str(tmp_path / "saved"))
    cfg = make_cfg(tiny_dir, tmp_path, "disk", max_steps=2, data={"train": str(tmp_path / "saved"),
                                                                   "max_length": 32, "max_prompt_length": 16})
    assert train(cfg)["status"] == "finished"
