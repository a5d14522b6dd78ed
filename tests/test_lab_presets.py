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
    # the paper's 7 methods, the 4 mitigations (WPO, TR-DPO, DPO + SFT term, length-normalized DPO), online DPO
    assert len(main) == 12 * 3 * 3
    controls = [r for r in paper.runs if r.group == "controls"]
    assert sorted({dict(r.options)["is_control"] for r in controls}) == ["matched_random", "mean", "permute"]
    assert {r.method for r in controls} == {"is-dpo"} and {r.beta for r in controls} == {presets.CLIP_BETA}
    assert {r.seed for r in controls} == {0, 1, 2} and len(controls) == 9
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
    assert {(r.method, r.beta, r.seed) for r in sel} == {("dpo", 0.01, 1), ("is-dpo", 0.01, 1)}
    # DPO, WPO (dpo + weights), TR-DPO (dpo + ref_sync), IS-DPO, the clip ablation's is-dpo runs at beta 0.01,
    # seed 1 (eps .25, .5, 2, 4) and the 3 controls
    assert len(sel) == 3 + 1 + 4 + 3
    assert all("is_clip" in r.run_id for r in presets.select_runs(runs, only=["is_clip"]))


def test_methods_declared_once_and_checked_against_the_registry():
    """The paper grid's methods come from presets.PAPER_METHODS + MITIGATIONS (+ online DPO), each checked
    against isdaa.losses.METHODS when the preset is built: a name the registry lacks is an error, not a
    silently empty run."""
    from isdaa.losses import METHODS, validate_options

    assert all(m in METHODS for m in presets.PAPER_METHODS)
    paper = presets.get_preset("paper")
    main = {(r.method, r.options, r.config) for r in paper.runs if r.group == presets.MAIN}
    arms = [presets.Arm(m) for m in presets.PAPER_METHODS] + list(presets.MITIGATIONS) + [presets.Arm(presets.ONLINE)]
    assert main == {(a.method, a.options, a.config) for a in arms}
    for arm in presets.MITIGATIONS + presets.CONTROLS:  # every option is one the registry knows
        validate_options(dict(arm.options))
        METHODS[arm.method].check_options(dict(arm.options))
    with pytest.raises(ValueError, match="'no-such-loss' is not in isdaa.losses.METHODS"):
        presets.grid(("dpo", presets.Arm("no-such-loss")), (0.1,), (0,))
    with pytest.raises(ValueError, match="run group 'nope'"):
        presets.RunSpec("dpo", 0.1, 0, 1e-3, group="nope")


def test_an_arm_with_engine_settings_is_its_own_run():
    """An Arm's options and engine settings reach the RunSpec (hashable: a dict setting is kept as sorted pairs),
    its id (the resume key), its label and its dict (lab_spec.json, the engine's config)."""
    arm = presets.Arm("dpo", (("rpo_eta", 0.1),), (("ref_sync", {"steps": 64, "alpha": 0.6}),
                                                   ("ref_logps", "on_the_fly")))
    (r,) = presets.grid((arm,), (0.1,), (0,), lrs=(1e-4,))
    assert r.options == (("rpo_eta", 0.1),) and hash(r) == hash(presets.RunSpec(**{**r.__dict__}))
    assert r.run_id == "dpo_b0.1_lr0.0001_adamw_rpo_eta=0.1_ref_sync=alpha0.6-steps64_ref_logps=on_the_fly_s0"
    assert r.label == "dpo[rpo_eta=0.1,ref_sync 0.6/64]"
    assert r.to_dict()["config"] == {"ref_sync": {"steps": 64, "alpha": 0.6}, "ref_logps": "on_the_fly"}


def test_the_mitigation_and_control_arms():
    """The arms of issue 23 as the engine takes them: WPO as TRL 1.x (no clamp), TR-DPO with a moving reference
    (on-the-fly reference log-probs) every 200 steps at TRL's alpha 0.6, DPO + the SFT term at TRL's equal
    weights, length-normalized DPO, and the three IS controls; the micro preset runs each once, its TR-DPO
    syncing within its 4 steps."""
    from isdaa.lab.aggregate import short_name

    labels = {r.label for r in presets.get_preset("paper").runs}
    assert {"dpo[wpo,no clamp]", "dpo[ref_sync 0.6/200]", "dpo-sft[sft 1]", "dpo-norm", "is-dpo[permute]",
            "is-dpo[mean]", "is-dpo[matched_random]"} <= labels
    # 5 syncs in the paper-regime run of ~1,158 steps (TRL: 512 of ~2,900 steps, ~5.7)
    assert 1_158 // presets.TRDPO_SYNC["steps"] == 5 and presets.TRDPO_SYNC["alpha"] == 0.6
    row = {"method": "dpo", "options": '{"wpo_max_weight": null, "wpo_weighting": true}', "config": "{}"}
    assert short_name(row) == "dpo [wpo, no clamp]"
    micro = presets.get_preset("micro")
    arms = {(r.method, r.options, r.group) for r in micro.runs}
    for arm in presets.MITIGATIONS:
        assert (arm.method, arm.options, presets.MAIN) in arms
    for arm in presets.CONTROLS:
        assert (arm.method, arm.options, presets.CONTROLS_GROUP) in arms
    (tr,) = [r for r in micro.runs if r.config]
    assert tr.to_dict()["config"]["ref_sync"] == {"alpha": 0.6, "steps": 2}


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
