"""Experiment trackers through accelerate (`Accelerator(log_with=...)`, `init_trackers`, `log`): every
tracker accelerate supports (tensorboard, wandb, trackio, comet_ml, mlflow, aim, clearml, dvclive,
swanlab), `all` (those installed) and any class registered with
`accelerate.tracking.register_tracker_class`. metrics.jsonl is written by the loop whatever the trackers.

Logs of local trackers (tensorboard, aim, dvclive, ...) go to RUN/trackers/<run name>/.
"""

from __future__ import annotations

from pathlib import Path

# pip names of accelerate's built-in trackers, for the error when one is missing
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "comet_ml": "comet-ml",
            "mlflow": "mlflow", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab"}


def accelerator_kwargs(cfg, out) -> dict:
    """`log_with` and `project_config` for `Accelerator(...)`. A named tracker that is not installed is an
    ImportError here, before training (accelerate itself would drop it with a debug message)."""
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import ProjectConfiguration

    names = list(cfg.report_to)
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name in PACKAGES and name not in available:
            raise ImportError(f"report_to: {name} needs `pip install {PACKAGES[name]}`")
    return {"log_with": names or None,
            "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(Path(out) / "trackers"))}


def flat_config(d: dict, prefix: str = "") -> dict:
    """Nested config -> {dotted key: int | float | str | bool} (what every tracker's hparams accept)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def tags(record: dict) -> dict:
    """A metrics.jsonl record -> the trackers' scalars, tagged as transformers' trackers tag TRL's:
    `eval/*` as they are, everything else under `train/` (`lr` as `train/learning_rate`)."""
    out = {}
    for k, v in record.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
            out[k if k.startswith("eval/") else "train/" + ("learning_rate" if k == "lr" else k)] = v
    return out


class Trackers:
    """The run's trackers: started with the resolved config; `log` sends a record's numbers (`tags`);
    `log_table` sends a table to the trackers that take tables (wandb, clearml). accelerate's
    `end_training` (called by the loop) finishes them.

    A step is sent once: a resumed run replays the steps after its checkpoint, which the trackers of the
    interrupted run already received (a tracker's log cannot be truncated as metrics.jsonl is), so steps
    up to `sent_through` (the last step the interrupted run logged) are not sent again; a bit-exact resume
    computes the same values for them. The loop appends to metrics.jsonl before sending, so a kill between
    the two can leave a hole, never a duplicate."""

    def __init__(self, accelerator, cfg, out):
        from isdaa.config import to_dict

        self.accelerator = accelerator
        self.sent_through = 0
        if accelerator.log_with:
            accelerator.init_trackers(cfg.run_name or Path(out).name, config=flat_config(to_dict(cfg)))

    @property
    def active(self) -> list:
        return list(self.accelerator.trackers) if self.accelerator.is_main_process else []

    def log(self, record: dict, step: int) -> None:
        if self.active and step > self.sent_through:
            self.accelerator.log(tags(record), step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        if step <= self.sent_through:
            return
        for tracker in self.active:
            if callable(getattr(tracker, "log_table", None)):
                tracker.log_table(name, columns=columns, data=rows, step=step)

    def close(self) -> None:
        """Nothing to do: `accelerator.end_training()` finishes every tracker."""

