"""Trackers go through accelerate (`log_with`, `init_trackers`): a tracker class registered with accelerate
receives the resolved config and exactly the numbers written to metrics.jsonl; `none` / `all` / a missing
package behave as documented."""

from __future__ import annotations

import pytest
from accelerate.tracking import GeneralTracker, register_tracker_class
from test_train import make_cfg, metrics

from isdaa.api import train


class RecordingTracker(GeneralTracker):
    """Registered under its `name`, like a built-in tracker: accelerate builds it in init_trackers."""

    name = "isdaa_test_recorder"
    requires_logging_directory = False
    instances: list = []

    def __init__(self, run_name: str, **kwargs):
        super().__init__()
        self.run_name, self.config, self.logged, self.finished = run_name, None, [], False
        RecordingTracker.instances.append(self)

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict):
        self.config = values

    def log(self, values: dict, step=None, **kwargs):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


def test_registered_tracker_gets_config_and_the_logged_numbers(tiny_dir, tmp_path):
    register_tracker_class(RecordingTracker)
    RecordingTracker.instances.clear()
    cfg = make_cfg(tiny_dir, tmp_path, "tracked", max_steps=3, report_to=[RecordingTracker.name],
                   run_name="my-run")
    train(cfg)
    (tracker,) = RecordingTracker.instances
    assert tracker.run_name == "my-run" and tracker.finished
    assert tracker.config["optim.lr"] == 3e-3 and tracker.config["method"] == "dpo"  # flattened resolved config
    rows = metrics(cfg)
    assert [step for step, _ in tracker.logged] == [r["step"] for r in rows] == [1, 2, 3]
    for (_, values), row in zip(tracker.logged, rows):  # tagged as transformers' trackers tag TRL's
        assert values["train/loss"] == row["loss"] and values["train/rewards/margins"] == row["rewards/margins"]
        assert values["train/learning_rate"] == row["lr"] and "step" not in values and "train/step" not in values


@pytest.mark.parametrize("value, expected", [("none", []), (False, []), ("all", ["all"]),
                                             (["tensorboard", "wandb"], ["tensorboard", "wandb"])])
def test_report_to_values(tiny_dir, tmp_path, value, expected):
    from isdaa.config import load_config

    base = {"model": {"name_or_path": "m"}, "data": {"train": "d.jsonl"}, "output_dir": "o"}
    assert load_config({**base, "report_to": value}).report_to == expected


def test_unknown_tracker_names_accelerates_list():
    from isdaa.config import load_config

    with pytest.raises(ValueError, match=r"report_to must be one of \[.*'mlflow'.*'trackio'"):
        load_config({"model": {"name_or_path": "m"}, "data": {"train": "d"}, "output_dir": "o",
                     "report_to": ["tensorbord"]})


def test_all_with_nothing_installed_trains_and_missing_package_is_named(tiny_dir, tmp_path):
    from accelerate.tracking import get_available_trackers

    if get_available_trackers():
        pytest.skip("some tracker package is installed")
    assert train(make_cfg(tiny_dir, tmp_path, "all", max_steps=1, report_to=["all"]))["status"] == "finished"
    with pytest.raises(ImportError, match=r"report_to: mlflow needs `pip install mlflow`"):
        train(make_cfg(tiny_dir, tmp_path, "ml", max_steps=1, report_to=["mlflow"]))


class CrashAt:
    """A callback that kills the run (an exception, as a kill -9 would stop it) at the end of `step`,
    after the steps before it were logged and before its own record is written."""

    def __init__(self, step):
        self.step = step

    def on_train_begin(self, ctx):
        pass

    def on_step_end(self, ctx):
        if ctx.step == self.step:
            raise KeyboardInterrupt("killed")

    def on_train_end(self, ctx):
        pass


def test_trackers_never_receive_a_step_twice_after_a_resume(tiny_dir, tmp_path):
    """Checkpoints at steps 3 and 6, steps 4-5 logged, killed at step 6 before its record and checkpoint:
    the resumed run replays 4-5 from checkpoint 3; the trackers received them before and do not again
    (they did: TensorBoard showed the resumed steps twice). Every step reaches the trackers once, eval/*
    tagged as such."""
    register_tracker_class(RecordingTracker)
    RecordingTracker.instances.clear()
    cfg = make_cfg(tiny_dir, tmp_path, "resumed", max_steps=7, save_steps=3, report_to=[RecordingTracker.name],
                   eval_steps=3, data={"eval": str(tmp_path / "resumed.jsonl"), "eval_split": "train"})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[CrashAt(6)])
    train(cfg, resume=True)
    first, second = RecordingTracker.instances
    sent = [step for t in (first, second) for step, _ in t.logged]
    assert [step for step, _ in first.logged] == [1, 2, 3, 4, 5]
    assert sent == [1, 2, 3, 4, 5, 6, 7]                     # each step once, in order
    assert [r["step"] for r in metrics(cfg)] == [1, 2, 3, 4, 5, 6, 7]
    evals = [step for t in (first, second) for step, values in t.logged if "eval/loss" in values]
    assert evals == [3, 6, 7] and not any(k.startswith("train/eval") for _, v in first.logged for k in v)
