"""`isdaa train ...` end to end through the click CLI: every method of the registry, the data formats,
sft and rm, resume and the output-dir rules."""

import json
import random

import pytest
import yaml
from click.testing import CliRunner

from isdaa.cli import main
from isdaa.losses import METHODS


def rows(n=16, seed=0, fmt="standard"):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = " ".join(f"w{rng.randrange(60)}" for _ in range(3))
        c, r = f"good yes w{rng.randrange(60)}", f"bad no w{rng.randrange(60)}"
        if fmt == "standard":
            out.append({"prompt": p, "chosen": c, "rejected": r})
        elif fmt == "conversational":
            out.append({"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
                        "rejected": [{"role": "assistant", "content": r}]})
        else:  # implicit prompt
            out.append({"chosen": f"Human: {p} Assistant: {c}", "rejected": f"Human: {p} Assistant: {r}"})
    return out


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for fmt in ("standard", "conversational", "implicit"):
        (root / f"{fmt}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(fmt=fmt)))
    cfg = {"model": {"name_or_path": str(tiny_dir)},
           "data": {"train": str(root / "standard.jsonl"), "max_length": 32, "max_prompt_length": 16},
           "optim": {"lr": "1e-3", "warmup_steps": 1}, "output_dir": str(root / "run"),
           "batch_size": 4, "micro_batch_size": 2, "max_steps": 2, "logging_steps": 1, "progress": False,
           "num_threads": 1, "mixed_precision": "no", "ref_cache_dir": str(root / "cache")}
    (root / "pref.yaml").write_text(yaml.safe_dump(cfg))
    return root


def invoke(*args):
    result = CliRunner().invoke(main, ["train", *args], catch_exceptions=False)
    return result


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_through_the_cli(setup, method):
    out = setup / f"m-{method}"
    unsplit = ["micro_batch_size=4"] if METHODS[method].whole_batch({}) else []  # dpo-sft: the batch unsplit
    r = invoke("pref", "--config", str(setup / "pref.yaml"), f"method={method}", f"output_dir={out}", *unsplit)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 2
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["method"] == method and resolved["kind"] == "pref" and resolved["optim"]["lr"] == 1e-3


@pytest.mark.parametrize("fmt", ["conversational", "implicit"])
def test_formats_through_the_cli(setup, fmt):
    out = setup / f"f-{fmt}"
    r = invoke("pref", "--config", str(setup / "pref.yaml"), f"data.train={setup / (fmt + '.jsonl')}",
               f"output_dir={out}")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["status"] == "finished"


def test_sft_rm_and_run_dir_rules(setup):
    out = setup / "sft"
    assert invoke("sft", "--config", str(setup / "pref.yaml"), "method=null", f"output_dir={out}").exit_code != 0
    base = yaml.safe_load((setup / "pref.yaml").read_text())
    base.pop("ref_cache_dir")
    (setup / "plain.yaml").write_text(yaml.safe_dump(base))
    assert invoke("sft", "--config", str(setup / "plain.yaml"), f"output_dir={out}").exit_code == 0
    assert invoke("rm", "--config", str(setup / "plain.yaml"), f"output_dir={setup / 'rm'}",
                  "optim.optimizer=sgd", "optim.sgd_momentum=0.9").exit_code == 0
    # a finished run is refused, resumed (nothing to do) or overwritten
    again = CliRunner().invoke(main, ["train", "sft", "--config", str(setup / "plain.yaml"), f"output_dir={out}"])
    assert again.exit_code != 0 and "finished run" in again.output
    assert invoke("sft", "--config", str(setup / "plain.yaml"), f"output_dir={out}", "--resume").exit_code == 0
    assert invoke("sft", "--config", str(setup / "plain.yaml"), f"output_dir={out}", "--overwrite").exit_code == 0
    bad = CliRunner().invoke(main, ["train", "pref", "--config", str(setup / "pref.yaml"), "method=dpoo"])
    assert bad.exit_code != 0 and "did you mean 'dpo'" in bad.output


def test_resume_through_the_cli(setup):
    """A run killed after its step-2 checkpoint (summary removed) continues to max_steps with --resume."""
    out = setup / "resume"
    args = ["pref", "--config", str(setup / "pref.yaml"), f"output_dir={out}", "max_steps=4", "save_steps=2",
            "resume_state_keep=2"]
    assert invoke(*args).exit_code == 0
    full = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    # simulate a crash after step 2: drop the later state, keep the step-2 checkpoint
    import shutil

    from isdaa.train.checkpoint import remove_final

    remove_final(out)
    shutil.rmtree(out / "checkpoint-4")
    (out / "summary.json").unlink()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")  # steps 3, 4 stay: resume must drop them
    refused = CliRunner().invoke(main, ["train", *args])
    assert refused.exit_code != 0 and "--resume" in refused.output
    assert invoke(*args, "--resume").exit_code == 0
    resumed = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert resumed == full
    assert json.loads((out / "summary.json").read_text())["resumed_from_step"] == 2


def test_pref_help_lists_the_registry():
    """`isdaa train pref --help` lists every base method and every loss option with its default."""
    from isdaa.losses import OPTIONS

    out = CliRunner().invoke(main, ["train", "pref", "--help"], terminal_width=200).output
    assert all(name in out for name, m in METHODS.items() if not m.importance_weighted)
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  loss.")}
    assert all(f"= {json.dumps(o.default)}  {o.doc[:20]}" in lines[f"loss.{name}"] for name, o in OPTIONS.items())
