"""The lab's presets: the grids, and the step regime each run trains in."""

from __future__ import annotations

import pytest

from isdaa.lab import presets


def _steps(p: presets.Preset, r: presets.RunSpec, kept: float) -> int:
    """Optimizer steps of run r when a fraction `kept` of the labelled prompts gives a training pair
    (the rest are pairs of identical responses: about 7% at the quick preset's pi_ref)."""
    pairs = r.n_pairs if r.n_pairs is not None else int(kept * p.n_pairs)
    return p.epochs * (pairs // p.batch)


def test_main_presets_train_in_the_papers_regime():
    """>= 1,000 small cosine-scheduled steps per main run, even if 10% of the pairs were dropped."""
    for name in ("quick", "paper"):
        p = presets.get_preset(name)
        assert p.scheduler == "cosine" and 0 < p.warmup_ratio <= 0.1
        for r in p.runs:
            assert r.n_pairs is None and r.scheduler is None and r.optimizer == "adamw", r.run_id
            assert _steps(p, r, kept=0.9) >= 1_000, r.run_id
            assert r.lr == presets.PAPER_LR
    # the first round's regime stays in `regimes`: 2 epochs of 3,700 pairs = 114 steps, constant rate
    reg = presets.get_preset("regimes")
    old = [r for r in reg.runs if r.n_pairs == 3_700]
    assert old and all(_steps(reg, r, 0.9) == 114 and r.scheduler == "constant" for r in old)
    assert {r.lr for r in old if r.optimizer == "adamw"} == {2e-3}


def test_presets_grids():
    quick = presets.get_preset("quick")
    assert {(r.method, r.beta) for r in quick.runs} == {
        (m, b) for m in ("dpo", "is-dpo") for b in (0.01, 0.1)} | {("online-dpo", 0.1)}
    paper = presets.get_preset("paper")
    assert {r.method for r in paper.runs} == set(presets.OFFLINE_METHODS) | {"online-dpo"}
    assert {r.seed for r in paper.runs} == {0, 1, 2} and {r.beta for r in paper.runs} == {0.01, 0.05, 0.1}
    main = [r for r in paper.runs if r.group == "main"]
    assert len(main) == 8 * 3 * 3
    clip = [r for r in paper.runs if r.group == "clip"]
    # from the authors' release default 0.25 to 4; eps = 1 (the default) is the main grid's run
    assert sorted({dict(r.options)["is_clip"] for r in clip}) == [0.25, 0.5, 2.0, 4.0]
    assert {r.seed for r in clip} == {0, 1, 2} and {r.beta for r in clip} == {presets.CLIP_BETA}
    regimes = presets.get_preset("regimes")
    assert {r.optimizer for r in regimes.runs} == {"adamw", "sgd"}
    assert {r.seed for r in regimes.runs} == {0, 1, 2}
    assert {r.label for r in regimes.runs} == {"dpo", "is-dpo", "is-dpo[self-norm]", "is-dpo[len-norm]"}
    # every cell holds DPO and IS-DPO with the same seeds (the comparison is paired)
    cells = {(r.lr, r.optimizer, r.n_pairs, r.scheduler) for r in regimes.runs}
    assert len(cells) == len(presets.REGIME_CELLS)
    for c in cells:
        at = [r for r in regimes.runs if (r.lr, r.optimizer, r.n_pairs, r.scheduler) == c and not r.options]
        assert sorted((r.method, r.seed) for r in at) == sorted((m, s) for m in ("dpo", "is-dpo") for s in (0, 1, 2))
    cal = presets.get_preset("calibrate")
    assert {r.method for r in cal.runs} == {"dpo"}  # chosen on DPO alone, before any IS run
    for p in (quick, paper, regimes, cal, presets.get_preset("micro")):
        ids = [r.run_id for r in p.runs]
        assert len(ids) == len(set(ids)), p.name  # run ids are the resume keys
    with pytest.raises(ValueError):
        presets.get_preset("nope")


def test_run_ids_record_the_regime():
    a = presets.RunSpec("dpo", 0.01, 0, 2e-3)
    b = presets.RunSpec("dpo", 0.01, 0, 2e-3, **presets.OLD_REGIME)
    assert a.run_id != b.run_id and "n=3700" in b.run_id and "sched=constant" in b.run_id


def test_select_runs():
    runs = presets.get_preset("paper").runs
    sel = presets.select_runs(runs, methods=["dpo", "is-dpo"], betas=[0.01], seeds=[1])
    assert {(r.method, r.beta, r.seed) for r in sel} == {("dpo", 0.01, 1), ("is-dpo", 0.01, 1)} and \
        len(sel) == 2 + 4  # + the clip ablation's is-dpo runs at beta 0.01, seed 1 (eps .25, .5, 2, 4)
    assert all("is_clip" in r.run_id for r in presets.select_runs(runs, only=["is_clip"]))


def test_methods_declared_once_and_checked_against_the_registry():
    """The paper grid's methods come from presets.PAPER_METHODS + MITIGATIONS (+ online DPO), each checked
    against isdaa.losses.METHODS when the preset is built: a name the registry lacks is an error, not a
    silently empty run."""
    from isdaa.losses import METHODS

    assert all(m in METHODS for m in presets.PAPER_METHODS)
    paper = presets.get_preset("paper")
    main = {(r.method, r.options, r.config) for r in paper.runs if r.group == presets.MAIN}
    arms = [presets.Arm(m) for m in presets.PAPER_METHODS] + list(presets.MITIGATIONS) + [presets.Arm(presets.ONLINE)]
    assert main == {(a.method, a.options, a.config) for a in arms}
    with pytest.raises(ValueError, match="'no-such-loss' is not in isdaa.losses.METHODS"):
        presets.grid(("dpo", presets.Arm("no-such-loss")), (0.1,), (0,))
    with pytest.raises(ValueError, match="run group 'nope'"):
        presets.RunSpec("dpo", 0.1, 0, 1e-3, group="nope")


def test_an_arm_with_engine_settings_is_its_own_run():
    """An Arm's options and engine settings reach the RunSpec, its id (the resume key) and its label."""
    arm = presets.Arm("dpo", (("rpo_eta", 0.1),), (("ref_sync", {"every": 64, "alpha": 0.6}),))
    (r,) = presets.grid((arm,), (0.1,), (0,), lrs=(1e-4,))
    assert r.options == (("rpo_eta", 0.1),) and r.config == (("ref_sync", {"every": 64, "alpha": 0.6}),)
    assert r.run_id == "dpo_b0.1_lr0.0001_adamw_rpo_eta=0.1_ref_sync=alpha0.6-every64_s0"
    assert r.label == "dpo[rpo_eta=0.1,ref_sync]"
    assert r.to_dict()["config"] == {"ref_sync": {"every": 64, "alpha": 0.6}}


def test_presets_take_the_task_and_its_calibrated_rate():
    """get_preset(name, task): the preset carries the task; its main runs use the task's calibrated rate; a
    task without a calibration runs at the key-token task's rate and its calibration says so."""
    from dataclasses import replace

    from isdaa.lab.keytoken import KeyTokenTask

    quick = presets.get_preset("quick")
    assert quick.task == KeyTokenTask() and quick.calibration == presets.CALIBRATIONS["key-token"]
    custom = replace(KeyTokenTask(), name="my-task")
    q = presets.get_preset("quick", custom)
    assert q.task.name == "my-task" and not q.calibration.calibrated
    assert {r.lr for r in q.runs} == {presets.PAPER_LR} and "not calibrated for task 'my-task'" in q.calibration.text()
    d = q.to_dict()
    assert d["task"]["task"] == "my-task" and d["calibration"]["lr"] == presets.PAPER_LR
    from isdaa.lab.length import LengthTask

    length = presets.get_preset("paper", LengthTask())
    assert length.calibration.calibrated and {r.lr for r in length.runs} == {presets.CALIBRATIONS["length"].lr}
    cal = presets.get_preset("calibrate", custom)
    assert {r.method for r in cal.runs} == {"dpo"} and tuple(sorted(r.lr for r in cal.runs)) == presets.CALIBRATION_LRS
