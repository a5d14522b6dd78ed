"""The one reader of the lab's run folders (`DIR/runs/<run_id>/`): every other lab module reads a run
through these functions, so that a change of the engine's layout is followed in one place.

A run folder holds the engine's output (summary.json, config.yaml, metrics.jsonl and the checkpoints,
found only through `isdaa.evaluate.evaluator.list_checkpoints`), the evaluator's records (eval/*.json:
one per checkpoint plus reference.json for pi_ref at step 0, each naming its `step` and `name`;
eval/samples/<name>.jsonl), and the lab's own files (lab_spec.json = RunSpec.to_dict(), ratios.jsonl,
lab_done.json: the run is finished).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from isdaa.io import read_jsonl

DONE = "lab_done.json"
SPEC = "lab_spec.json"


def read_json(path: Path) -> dict:
    """A JSON file; a clear error naming it when it is missing or broken."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (a finished lab run has it)") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None


def finished_runs(root: str | Path, specs: dict[str, dict] | None = None) -> list[tuple[Path, dict | None]]:
    """(run dir, spec) of the finished runs of a lab folder. `specs` ({run_id: RunSpec.to_dict()}, the
    preset being reported): only its runs, described by ITS spec (a run shared between presets is reported
    in this preset's group); None: every finished run, each with spec None (read `spec(run_dir)`)."""
    runs = [done.parent for done in sorted(Path(root).glob(f"runs/*/{DONE}"))]
    if specs is None:
        return [(r, None) for r in runs]
    return [(r, specs[r.name]) for r in runs if r.name in specs]


def spec(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / SPEC)


def done_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / DONE
    return read_json(path) if path.exists() else None


def total_steps(run_dir: Path) -> int | None:
    """The run's optimizer steps (the engine's summary.json `total_steps`; None when absent)."""
    path = Path(run_dir) / "summary.json"
    steps = read_json(path).get("total_steps") if path.exists() else None
    return int(steps) if steps is not None else None


def resolved_optim(run_dir: Path) -> dict:
    """The `optim` section of the run's resolved config.yaml ({} when absent)."""
    path = Path(run_dir) / "config.yaml"
    return ((yaml.safe_load(path.read_text()) or {}).get("optim") or {}) if path.exists() else {}


def evals(run_dir: Path) -> list[dict]:
    """The evaluator's records, sorted by step: pi_ref (reference.json) at step 0, then one per checkpoint.
    Each gets `_step` and `_name` (the record's `name`: its samples file is eval/samples/<name>.jsonl)."""
    out = []
    for path in sorted((Path(run_dir) / "eval").glob("*.json")):
        e = read_json(path)
        if "win_rate" not in e:  # chosen_rewards.json and other caches
            continue
        ref = e.get("name") == "reference" or path.stem == "reference"
        if not ref and e.get("step") is None:
            raise ValueError(f"{path}: an evaluation record without a 'step'")
        e["_step"] = 0 if ref else int(e["step"])
        e["_name"] = "reference" if ref else (e.get("name") or path.stem)
        out.append(e)
    return sorted(out, key=lambda e: e["_step"])


def samples(run_dir: Path, name: str) -> list[dict]:
    """The evaluator's samples of one record (`evals()[i]["_name"]`); [] when not saved."""
    path = Path(run_dir) / "eval" / "samples" / f"{name}.jsonl"
    return read_jsonl(path) if path.exists() else []


def metrics(run_dir: Path) -> list[dict]:
    """The trainer's per-step records (metrics.jsonl; a partial last line from a kill is tolerated)."""
    path = Path(run_dir) / "metrics.jsonl"
    return read_jsonl(path, tolerate_partial_tail=True) if path.exists() else []


def ratios(run_dir: Path) -> list[dict]:
    """The lab's probe: importance statistics of fixed training pairs per checkpoint (ratios.jsonl)."""
    path = Path(run_dir) / "ratios.jsonl"
    return read_jsonl(path) if path.exists() else []


def checkpoint_step(ck: Path) -> int:
    """A checkpoint's optimizer step: its trainer_state.json `step` (this engine) or `global_step` (TRL's
    name), else the number ending its folder name (step-00000012, checkpoint-12)."""
    state = read_json(Path(ck) / "trainer_state.json") if (Path(ck) / "trainer_state.json").exists() else {}
    for key in ("step", "global_step"):
        if state.get(key) is not None:
            return int(state[key])
    digits = Path(ck).name.rsplit("-", 1)[-1]
    if digits.isdigit():
        return int(digits)
    raise ValueError(f"{ck}: no step in trainer_state.json nor in the folder name")


def final_model(run_dir: Path) -> Path:
    """Where a finished engine run keeps its final model: RUN/final/ (this engine's layout) or the run folder
    itself (TRL's layout: the model at the output root)."""
    for path in (Path(run_dir) / "final", Path(run_dir)):
        if (path / "config.json").exists():
            return path
    raise FileNotFoundError(f"{run_dir}: no final model (config.json in final/ or at the root)")


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of the run's checkpoints, as `isdaa.evaluate.evaluator.list_checkpoints` finds them."""
    from isdaa.evaluate.evaluator import list_checkpoints

    return [(checkpoint_step(ck), ck) for ck in list_checkpoints(run_dir)]
