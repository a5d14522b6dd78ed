"""`isdaa lab --task module:Name`: a task defined outside the package (a file on sys.path) runs through
every stage of the micro preset; the task interface's checks name what is wrong."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from isdaa.cli import main
from isdaa.lab import rundir
from isdaa.lab.task import load_task, response_tokens

pytestmark = pytest.mark.slow

# A user's task: copy the prompt's first word, then stop. Its own vocabulary, sizes, model and reward.
USER_TASK = '''
import random
from dataclasses import dataclass

from isdaa.lab.task import ModelShape, Task, response_tokens


@dataclass(frozen=True)
class CopyFirst(Task):
    name: str = "copy-first"
    summary: str = "copy the prompt's first word and stop."
    words: tuple = tuple(f"a{i}" for i in range(10)) + ("=",)
    prompt_words: int = 5
    max_response_tokens: int = 8
    component_names: tuple = ("copied", "extra", "no_eos")
    reward_formula: str = "copied - 0.5*extra - no_eos"
    model: ModelShape = ModelShape(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   max_position_embeddings=16)

    def sample_prompt(self, rng):
        return " ".join(rng.choice(self.words[:-1]) for _ in range(4)) + " ="

    def sample_demonstration(self, prompt, rng):
        out = [rng.choice(self.words[:-1]) for _ in range(rng.randint(0, 3))]
        out.insert(rng.randint(0, len(out)), prompt.split()[0])
        return " ".join(out)

    def reward_components(self, prompt, response):
        toks, ended = response_tokens(response, self.max_response_tokens)
        copied = float(bool(toks) and toks[0] == prompt.split()[0])
        extra = max(0, len(toks) - 1)
        no_eos = 0 if ended else 1
        return {"reward": copied - 0.5 * extra - no_eos, "copied": copied, "extra": extra, "no_eos": no_eos}

    def example_cells(self, prompt):
        return {"first word": prompt.split()[0]}
'''


@pytest.fixture
def user_task(tmp_path, monkeypatch):
    (tmp_path / "my_lab_task.py").write_text(textwrap.dedent(USER_TASK))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_lab_task:CopyFirst"


def test_a_users_task_runs_through_the_micro_preset(user_task, tmp_path):
    out = tmp_path / "lab"
    # DPO, IS-DPO and online DPO (their ids end so): the arms are exercised by test_lab_cli
    result = CliRunner().invoke(main, ["lab", "--preset", "micro", "--task", user_task, "--out", str(out),
                                       "--jobs", "1", "--no-progress", "--only", "dpo_b0.1_lr0.002_adamw_s0"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    lab = json.loads((out / "lab.json").read_text())
    assert lab["task"] == "my_lab_task:CopyFirst" and lab["environment"]["task"] == "copy-first"
    assert lab["preset"]["task"]["vocabulary"] == [f"a{i}" for i in range(10)] + ["="]
    # the data, model and sampling lengths are the task's
    sft = [json.loads(line) for line in (out / "data" / "sft.jsonl").read_text().splitlines()]
    assert all(len(r["prompt"].split()) == 5 and r["prompt"].endswith(" =") for r in sft)
    cfg = json.loads((out / "task" / "init" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (32, 2, 11 + 4)
    pairs = [json.loads(line) for line in (out / "data" / "golden_eval" / "pairs.jsonl").read_text().splitlines()]
    assert all(len(p["chosen"].split()) <= 8 for p in pairs)
    # labels from the task's reward, recomputed here by hand
    for p in pairs[:10]:
        toks = p["chosen"].split()
        copied = float(bool(toks) and toks[0] == p["prompt"].split()[0])
        ended = len(toks) < 8
        assert p["chosen_reward"] == pytest.approx(copied - 0.5 * max(0, len(toks) - 1) - (0 if ended else 1))
    for name in ("dpo_b0.1_lr0.002_adamw_s0", "is-dpo_b0.1_lr0.002_adamw_s0", "online-dpo_b0.1_lr0.002_adamw_s0"):
        run = out / "runs" / name
        assert (run / "lab_done.json").exists() and rundir.checkpoints(run)
        assert [e["_step"] for e in rundir.evals(run)] == [0] + [s for s, _ in rundir.checkpoints(run)]
    # the report speaks the task's language: its components, its example columns
    md = (out / "report.md").read_text()
    assert "Task `copy-first` (`my_lab_task:CopyFirst`)" in md and "| first word |" in md
    header = (out / "csv" / "points.csv").read_text().splitlines()[0].split(",")
    assert {"copied", "extra", "no_eos"} <= set(header) and "coverage" not in header


def test_bad_tasks_are_named(user_task, tmp_path):
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        load_task("no_such_module:Task")
    with pytest.raises(ValueError, match="has no 'Nope'"):
        load_task("my_lab_task:Nope")
    with pytest.raises(ValueError, match="expected a built-in name"):
        load_task("length-ish")
    (tmp_path / "bad_lab_task.py").write_text(textwrap.dedent(USER_TASK).replace(
        'out.insert(rng', 'out.append("zz")\n        out.insert(rng'))  # a demonstration word outside the vocabulary
    with pytest.raises(ValueError, match=r"sample_demonstration #0 .* \(unknown: \['zz'\]\)"):
        load_task("bad_lab_task:CopyFirst")
    result = CliRunner().invoke(main, ["lab", "--preset", "micro", "--task", "bad_lab_task:CopyFirst", "--out",
                                       str(tmp_path / "x"), "--list-runs"])
    assert result.exit_code == 2 and "Invalid value for --task" in result.output


def test_response_tokens_rule():
    """What every task reads from a sampled text: tokens up to an explicit <eos>, specials included;
    `limit` tokens without <eos> were cut."""
    assert response_tokens("a <pad> b <eos> <pad> <pad>", 4) == (["a", "<pad>", "b"], True)
    assert response_tokens("a b c", 4) == (["a", "b", "c"], True)  # EOS stripped by the sampler
    assert response_tokens("a b c d", 4) == (["a", "b", "c", "d"], False)
    assert response_tokens("", 4) == ([], True)
