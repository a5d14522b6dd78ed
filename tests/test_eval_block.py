"""The training config's `eval` block runs the live over-optimization eval (isdaa.evaluate.live) from the
config alone: eval/* metrics on schedule, a generations table per eval, a stop on kl_budget."""

from __future__ import annotations

from accelerate.tracking import GeneralTracker, register_tracker_class
from test_train import make_cfg, pref_rows, write_jsonl

from isdaa.api import train
from isdaa.io import read_jsonl

REWARD_MODULE = '''
def count_good(prompts, responses):
    return [float(r.split().count("good")) for r in responses]
'''


class TableTracker(GeneralTracker):
    name = "isdaa_test_tables"
    requires_logging_directory = False
    tables: list = []

    def __init__(self, run_name, **kwargs):
        super().__init__()

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        pass

    def log(self, values, step=None, **kwargs):
        pass

    def log_table(self, table_name, columns=None, data=None, dataframe=None, step=None, **kwargs):
        TableTracker.tables.append((table_name, columns, data, step))


def test_eval_block_logs_eval_metrics_and_stops_on_kl_budget(tiny_dir, tmp_path, monkeypatch):
    (tmp_path / "golden_for_test.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    register_tracker_class(TableTracker)
    TableTracker.tables.clear()
    prompts = write_jsonl(tmp_path / "prompts.jsonl", pref_rows(8, seed=3))
    cfg = make_cfg(tiny_dir, tmp_path, "live", rows=pref_rows(64), epochs=1, optim={"lr": 3e-2, "warmup_steps": 0},
                   report_to=[TableTracker.name],
                   eval={"reward": "golden_for_test:count_good", "prompts": prompts, "every": 2, "n_prompts": 4,
                         "n": 2, "max_new_tokens": 5, "kl_samples": 2, "kl_budget": 0.05, "log_generations": 8})
    summary = train(cfg)
    assert summary["status"] == "stopped" and summary["stop_reason"].startswith("kl_budget: sqrt KL (k1)")
    evals = [r for r in read_jsonl(tmp_path / "live" / "metrics.jsonl") if "eval/kl_k1" in r]
    assert evals and [r["step"] for r in evals] == list(range(2, 2 * len(evals) + 1, 2))
    assert evals[-1]["eval/sqrt_kl"] > 0.05 >= max([0.0] + [r["eval/sqrt_kl"] for r in evals[:-1]])
    assert summary["step"] == evals[-1]["step"]
    # the generations table holds every win-rate sample: recompute the win rate from it by hand
    gens = read_jsonl(tmp_path / "live" / "eval_generations.jsonl")
    last = [g for g in gens if g["step"] == evals[-1]["step"]]
    assert len(last) == 8
    rows = pref_rows(8, seed=3)[:4]
    chosen_reward = {r["prompt"]: float(r["chosen"].split().count("good")) for r in rows}
    wins = []
    for g in last:
        assert g["reward"] == float(g["response"].split().count("good"))
        c = chosen_reward[g["prompt"]]
        wins.append(1.0 if g["reward"] > c else 0.5 if g["reward"] == c else 0.0)
    assert abs(evals[-1]["eval/win_rate"] - sum(wins) / len(wins)) < 1e-12
    assert [t[3] for t in TableTracker.tables] == [r["step"] for r in evals]
    name, columns, data, _ = TableTracker.tables[-1]
    assert name == "eval/generations" and columns[:3] == ["step", "prompt", "response"] and len(data) == 8
    import yaml

    assert yaml.safe_load((tmp_path / "live" / "config.yaml").read_text())["eval"]["kl_budget"] == 0.05


def test_eval_block_validates():
    import pytest

    from isdaa.config import load_config

    base = {"model": {"name_or_path": "m"}, "data": {"train": "d"}, "output_dir": "o"}
    with pytest.raises(ValueError, match="eval.kl_estimator must be one of"):
        load_config({**base, "eval": {"kl_estimator": "k2"}})
    with pytest.raises(ValueError, match="unknown config key 'eval.kl_budjet' \\(did you mean 'kl_budget'"):
        load_config({**base, "eval": {"kl_budjet": 1}})
    with pytest.raises(ValueError, match="not rm"):
        load_config({**base, "eval": {}}, kind="rm")


def test_unimportable_reward_fails_before_step_1(tiny_dir, tmp_path, monkeypatch):
    """`eval.reward: myreward:fn` that cannot be imported, is no callable or takes the wrong arguments is
    a clear error before anything trains (it was `No module named 'myreward'` at step 4, leaving an
    unfinished run); a module in the working directory is found, as `python -m` would find it."""
    import pytest

    monkeypatch.chdir(tmp_path)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", pref_rows(8, seed=3))

    def cfg(reward, name):
        return make_cfg(tiny_dir, tmp_path, name, rows=pref_rows(16), max_steps=4,
                        eval={"reward": reward, "prompts": prompts, "every": 2, "n_prompts": 2, "n": 1,
                              "max_new_tokens": 3})

    (tmp_path / "notcallable_reward.py").write_text("fn = 3\n")
    (tmp_path / "onearg_reward.py").write_text("def fn(prompts):\n    return [0.0] * len(prompts)\n")
    (tmp_path / "broken_reward.py").write_text("raise RuntimeError('no GPU here')\n")
    for reward, error, message in [
            ("myreward_missing:fn", ImportError,
             r"eval.reward 'myreward_missing:fn': cannot import 'myreward_missing' "
             r"\(No module named 'myreward_missing'; searched the working directory"),
            ("notcallable_reward:fn", ValueError, r"'notcallable_reward' has no callable 'fn' \(it is a int\)"),
            ("onearg_reward:fn", ValueError, r"must take \(prompts, responses\)"),
            ("broken_reward:fn", ImportError, r"importing 'broken_reward' failed: RuntimeError: no GPU here"),
            (str(tmp_path), ValueError, r"not a reward-model folder")]:
        name = reward.split(":")[0].replace("/", "_")[-20:]
        with pytest.raises(error, match=message):
            train(cfg(reward, name))
        assert not (tmp_path / name / "metrics.jsonl").exists() and not (tmp_path / name / "config.yaml").exists()
    (tmp_path / "cwd_reward.py").write_text(REWARD_MODULE)   # found through the working directory only
    summary = train(cfg("cwd_reward:count_good", "cwd"))
    assert summary["status"] == "finished"
    assert "eval/win_rate" in read_jsonl(tmp_path / "cwd" / "metrics.jsonl")[-1]


def test_live_eval_on_the_training_prompts_only_when_asked(tiny_dir, tmp_path):
    import pytest

    from isdaa.config import load_config

    base = {"model": {"name_or_path": "m"}, "data": {"train": "d.jsonl"}, "output_dir": "o"}
    with pytest.raises(ValueError, match=r"eval: no evaluation prompts: set eval.prompts"):
        load_config({**base, "eval": {}})
    assert load_config({**base, "eval": {"prompts": "d.jsonl"}}).eval.prompts == "d.jsonl"
    cfg = make_cfg(tiny_dir, tmp_path, "ontrain", rows=pref_rows(16), max_steps=2,
                   eval={"every": 2, "n_prompts": 2, "max_new_tokens": 3, "split": "train",
                         "prompts": str(tmp_path / "ontrain.jsonl")})   # make_cfg's training file
    with pytest.warns(UserWarning, match=r"the live eval's prompts are the training data's"):
        train(cfg)
