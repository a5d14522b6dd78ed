"""Bad input gets a clear error naming the file, the row (line) and the field -- or a documented,
counted rule (identical pairs dropped, long prompts cut). Never a bare library traceback, never a
silent skip. At the CLI: one `Error: ...` line, exit code != 0."""

import json
import re
import warnings

import pytest
import yaml
from click.testing import CliRunner
from test_train import write_jsonl
from transformers import AutoTokenizer

from isdaa.data import DataError, load_rows, tokenize_pref, tokenize_sft

GOOD = {"prompt": "w1 w2", "chosen": "good yes", "rejected": "bad no"}
MSG = lambda role, text: {"role": role, "content": text}


def pref_error(tok, tmp_path, bad_row) -> str:
    """The message for a file whose line 3 is `bad_row` (line 2 is blank: line numbers, not indices)."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(bad_row) + "\n")
    with pytest.raises(DataError) as info:
        tokenize_pref(load_rows(str(path)), tok, 32, 16)
    return str(info.value)


@pytest.mark.parametrize("bad_row, field, message", [
    ({"prompt": "w1", "rejected": "bad"}, "chosen", "missing field 'chosen'"),
    ({"prompt": "w1", "chosen": 3, "rejected": "bad"}, "chosen", "must be a string or a list of messages, got int"),
    ({"prompt": "w1", "chosen": ["good"], "rejected": "bad"}, "chosen", "message 0 is malformed"),
    ({"prompt": [MSG("user", "w1")], "chosen": [{"role": "assistant"}], "rejected": [MSG("assistant", "b")]},
     "chosen", "message 0 is malformed"),
    ({"prompt": "w1", "chosen": {"role": "assistant", "content": "x"}, "rejected": "bad"}, "chosen",
     "got dict"),
    ({"prompt": "w1", "chosen": "good", "rejected": "   \n"}, "rejected", "empty or whitespace-only"),
    ({"prompt": "w1", "chosen": "", "rejected": "bad"}, "chosen", "empty or whitespace-only"),
    ({"prompt": "w1", "chosen": None, "rejected": "bad"}, "chosen", "is null"),
    ({"prompt": 7, "chosen": "good", "rejected": "bad"}, "prompt", "got int"),
    ({"prompt": "w1", "chosen": "good", "rejected": [MSG("assistant", "b")]}, "chosen",
     "both be strings or both be message lists"),
    ({**GOOD, "ref_chosen_logps": float("nan"), "ref_rejected_logps": -1.0}, "ref_chosen_logps", "not finite"),
    ({**GOOD, "chosen_logps": -1.0, "rejected_logps": float("-inf")}, "rejected_logps", "not finite"),
    ({**GOOD, "ref_chosen_logps": "abc", "ref_rejected_logps": -1.0}, "ref_chosen_logps", "must be a number"),
    ({**GOOD, "ref_chosen_logps": 2.5, "ref_rejected_logps": -1.0}, "ref_chosen_logps", "must be <= 0"),
    ({**GOOD, "ref_chosen_logps": -1.0}, "ref_chosen_logps", "given without 'ref_rejected_logps'"),
    ({"chosen": "Human: hi Assistant: ok", "rejected": "Human: hi Assistant: ok more"}, "chosen",
     "empty after removing the prompt"),
])
def test_bad_rows_name_file_line_and_field(tok, tmp_path, bad_row, field, message):
    err = pref_error(tok, tmp_path, bad_row)
    assert err.startswith(f"{tmp_path / 'd.jsonl'}: line 3: "), err
    assert repr(field) in err and message in err, err


def test_chat_template_rejecting_a_role(tok, tmp_path):
    strict = AutoTokenizer.from_pretrained(tok.name_or_path)
    strict.chat_template = ("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
                            "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
                            "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                            "{% if add_generation_prompt %}assistant:{% endif %}")
    row = {"prompt": [MSG("user", "w1")], "chosen": [MSG("robot", "good")], "rejected": [MSG("assistant", "b")]}
    err = pref_error(strict, tmp_path, row)
    assert "line 3" in err and "'chosen'" in err and "chat template rejected" in err and "unknown role robot" in err


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n', "line 2 is not valid JSON"),
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n[1, 2]\n', "line 2 is not a JSON object"),
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "\xff\xfe", "chosen": "b"}\n',
     "line 2 is not valid UTF-8"),
    (b"null\n" + b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n', "line 1 is not a JSON object"),  # pyarrow 26
    (b'{"prompt": "a", "chosen": "b", "rejected": "c"}\nnull\n', "line 2 is not a JSON object"),  # would crash
    (b'[{"prompt": "a", "chosen": "b", "rejected": "c"}]\n', "line 1 is not a JSON object"),  # not JSONL
    (b"", "no rows (empty dataset file)"),
    (b"\n  \n", "no rows (empty dataset file)"),
])
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(message)) as info:
        load_rows(str(path))
    assert str(path) in str(info.value)


def test_bad_json_parquet_and_suffix(tok, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.json").write_text('[{"prompt": "a",')
    with pytest.raises(DataError, match=r"d.json: not valid JSON \(line 1"):
        load_rows(str(tmp_path / "d.json"))
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": "a"}]), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d.parquet: row 0: missing field 'chosen' \(the row has \['answer', "
                                        r"'question'\]\)"):
        tokenize_pref(load_rows(str(tmp_path / "d.parquet")), tok, 32, 16)
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="x.parquet: not a readable parquet file"):
        load_rows(str(tmp_path / "x.parquet"))
    (tmp_path / "d.csv").write_text("prompt,chosen\n")  # csv goes through datasets: a header alone has no row
    with pytest.raises(DataError, match=r"d.csv: no rows \(empty dataset file\)"):
        load_rows(str(tmp_path / "d.csv"))
    (tmp_path / "d.txt").write_text("prompt,chosen\n")
    with pytest.raises(DataError, match="unsupported dataset file type '.txt'"):
        load_rows(str(tmp_path / "d.txt"))
    # extra columns are fine (ignored); the row still tokenizes
    pq.write_table(pa.Table.from_pylist([{**GOOD, "source": "x", "score": 1}]), tmp_path / "ok.parquet")
    assert len(tokenize_pref(load_rows(str(tmp_path / "ok.parquet")), tok, 32, 16)) == 1


def test_sft_rows_are_checked_too(tok, tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"prompt": "w1", "completion": "good"}, {"prompt": "w1"}])
    with pytest.raises(DataError, match=r"s.jsonl: line 2: SFT row has none of"):
        tokenize_sft(load_rows(path), tok, 32, 16)
    path = write_jsonl(tmp_path / "s2.jsonl", [{"prompt": "w1", "completion": 5}])
    with pytest.raises(DataError, match=r"line 1: field 'completion' must be a string"):
        tokenize_sft(load_rows(path), tok, 32, 16)
    path = write_jsonl(tmp_path / "s3.jsonl", [{"messages": [MSG("user", "a"), "oops"]}])
    with pytest.raises(DataError, match=r"line 1: field 'messages': message 1 is malformed"):
        tokenize_sft(load_rows(path), tok, 32, 16)


def test_documented_rules_identical_pairs_dropped_and_long_prompts_counted(tok, tmp_path):
    """Identical chosen/rejected (also after truncation) are dropped with a warning and counted; a prompt
    longer than max_prompt_length keeps its last tokens (counted); no response is cut to zero tokens."""
    long_prompt = " ".join(f"w{i % 50}" for i in range(40))
    rows = [GOOD, {"prompt": "w1", "chosen": "same", "rejected": "same"},
            {"chosen": "Human: a Assistant: same", "rejected": "Human: a Assistant: same"},   # implicit
            {"prompt": long_prompt, "chosen": "good " * 30, "rejected": "bad " * 30},
            {"prompt": "w1", "chosen": "w1 w2 w3 w4 w5 w6 good", "rejected": "w1 w2 w3 w4 w5 w6 bad"}]  # same after cut
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    stats = {}
    with pytest.warns(UserWarning, match=r"dropped 3 pair\(s\).*r.jsonl: line 2, .*line 3, .*line 5"):
        out = tokenize_pref(load_rows(path), tok, max_length=6, max_prompt_length=3, stats=stats)
    assert stats == {"data/rows": 5, "data/dropped_identical_pairs": 3, "data/dropped_unfinished_pairs": 0,
                     "data/truncated_prompts": 1}
    assert [e["row"] for e in out] == [f"{path}: line 1", f"{path}: line 4"]
    assert all(len(e["chosen_ids"]) >= 1 and len(e["rejected_ids"]) >= 1 for e in out)
    assert len(out[1]["prompt_ids"]) == 3 and out[1]["chosen_truncated"]
    with pytest.raises(ValueError, match="max_prompt_length"):
        tokenize_pref(load_rows(path), tok, max_length=4, max_prompt_length=4)
    with warnings.catch_warnings():  # an online batch keeps identical pairs (zero gradient, no silent loss)
        warnings.simplefilter("error")
        assert len(tokenize_pref(rows[1:2], tok, 32, 16, drop_identical=False)) == 1


def test_dropped_pairs_reach_the_summary(tiny_dir, tmp_path):
    from isdaa.api import train
    from isdaa.config import load_config

    rows = [{"prompt": f"w{i}", "chosen": "good yes", "rejected": "bad no"} for i in range(8)]
    rows += [{"prompt": "w9", "chosen": "same", "rejected": "same"}]
    cfg = load_config({"model": {"name_or_path": str(tiny_dir)},
                       "data": {"train": write_jsonl(tmp_path / "t.jsonl", rows), "max_length": 32,
                                "max_prompt_length": 16},
                       "output_dir": str(tmp_path / "run"), "batch_size": 4, "micro_batch_size": 4, "max_steps": 1,
                       "progress": False, "num_threads": 1, "mixed_precision": "no",
                       "ref_cache_dir": str(tmp_path / "cache")})
    with pytest.warns(UserWarning, match="dropped 1 pair"):
        summary = train(cfg)
    assert summary["data/dropped_identical_pairs"] == 1 and summary["train_examples"] == 8
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["data/dropped_identical_pairs"] == 1


# ---------------------------------------------------------------- configs

BASE = {"model": {"name_or_path": "m"}, "data": {"train": "d.jsonl"}, "output_dir": "out"}


@pytest.mark.parametrize("override, message", [
    (["method=is_dpo"], "method must be one of .* got 'is_dpo' (did you mean 'is-dpo'?)"),
    (["data.max_lenght=64"], "unknown config key 'data.max_lenght' (did you mean 'max_length'?)"),
    (["beta=-0.1"], "beta must be > 0 and finite, got -0.1"),
    (["beta=.nan"], "beta must be > 0 and finite, got nan"),
    (["beta=.inf"], "beta must be > 0 and finite, got inf"),
    (["loss.is_clip=-1"], "loss.is_clip must be a finite number > 0, got -1.0"),
    (["data.max_prompt_length=-5"], "data.max_length and max_prompt_length must be > 0"),
    (["micro_batch_size=0"], "batch_size and micro_batch_size must be > 0"),
    (["batch_size=6", "micro_batch_size=4"], "batch_size (6) must be a multiple of micro_batch_size (4)"),
    (["max_nonfinite_steps=0"], "max_nonfinite_steps must be >= 1"),
    (["optim.lr=.inf"], "optim.lr must be > 0 and finite"),
])
def test_bad_config_values(override, message):
    from isdaa.config import load_config

    with pytest.raises(ValueError) as info:
        load_config(BASE, override)
    pattern = ".*".join(re.escape(part) for part in message.split(".*"))
    assert re.search(pattern, str(info.value)), str(info.value)


def test_bad_yaml_file(tmp_path):
    from isdaa.config import load_config

    (tmp_path / "c.yaml").write_text("model: {name_or_path: m\n")
    with pytest.raises(ValueError, match="c.yaml: not valid YAML"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "l.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="a config must be a mapping"):
        load_config(tmp_path / "l.yaml")


# ---------------------------------------------------------------- the CLI: one clean Error line

@pytest.fixture(scope="module")
def cli_setup(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("badcli")
    write_jsonl(root / "good.jsonl", [{"prompt": f"w{i}", "chosen": "good yes", "rejected": "bad no"}
                                      for i in range(8)])
    (root / "bad.jsonl").write_text(json.dumps(GOOD) + "\n" + '{"prompt": "w1", "chosen": 5, "rejected": "x"}\n')
    cfg = {"model": {"name_or_path": str(tiny_dir)},
           "data": {"train": str(root / "good.jsonl"), "max_length": 32, "max_prompt_length": 16},
           "output_dir": str(root / "run"), "batch_size": 4, "micro_batch_size": 4, "max_steps": 1,
           "progress": False, "num_threads": 1, "mixed_precision": "no", "ref_cache_dir": str(root / "cache")}
    (root / "c.yaml").write_text(yaml.safe_dump(cfg))
    return root


@pytest.mark.parametrize("args, message", [
    (["data.train=BAD"], "line 2: field 'chosen' must be a string or a list of messages, got int 5"),
    (["data.train=MISSING"], "dataset file not found"),
    (["method=dpp"], "did you mean 'dpo'"),
    (["beta=0"], "beta must be > 0 and finite, got 0.0"),
    (["batch_size=3", "micro_batch_size=2"], "must be a multiple of micro_batch_size"),
])
def test_cli_errors_are_one_clean_line(cli_setup, args, message):
    from isdaa.cli import main

    args = [a.replace("BAD", str(cli_setup / "bad.jsonl")).replace("MISSING", str(cli_setup / "no.jsonl"))
            for a in args]
    r = CliRunner().invoke(main, ["train", "pref", "--config", str(cli_setup / "c.yaml"),
                                  f"output_dir={cli_setup / 'r'}", *args])
    assert r.exit_code != 0 and "Error:" in r.output and message in r.output, r.output
    assert "Traceback" not in r.output and not isinstance(r.exception, (KeyError, TypeError, AttributeError))


def test_cli_finished_run_refused_unless_overwrite(cli_setup):
    from isdaa.cli import main

    args = ["train", "pref", "--config", str(cli_setup / "c.yaml"), f"output_dir={cli_setup / 'fin'}"]
    assert CliRunner().invoke(main, args).exit_code == 0
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "holds a finished run (summary.json); use --overwrite" in r.output
    assert CliRunner().invoke(main, [*args, "--overwrite"]).exit_code == 0
