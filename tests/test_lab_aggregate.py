"""isdaa.lab.aggregate and the report on synthetic lab folders: every aggregate against numbers computed
by hand in the docstrings (mean, se over seeds, smoothed peak, final of the last 2 checkpoints, paired
difference over prompts)."""

import csv
import json
import math

import pytest
from lab_synth import PROMPTS, add_run, make_lab

from isdaa.lab import aggregate as agg
from isdaa.lab import report, sections

STEPS = (0, 2, 4, 6, 8, 10)
DPO = {0: [0.5, 0.6, 0.9, 0.7, 0.65, 0.55], 1: [0.5, 0.7, 0.8, 0.8, 0.6, 0.5]}
ISDPO = {0: [0.5, 0.6, 0.65, 0.7, 0.72, 0.74], 1: [0.5, 0.62, 0.66, 0.7, 0.7, 0.72]}
DPO_OFF = [0.1, -0.1, 0.05, -0.05]  # per-prompt offsets around the checkpoint's win rate (sum 0)
IS_OFF = [0.2, -0.2, 0.0, 0.0]


def _curve(wrs, kl_last):
    return [(s, w, kl_last * s / 10) for s, w in zip(STEPS, wrs)]


def _pp(wrs, off):
    return {s: [w + o for o in off] for s, w in zip(STEPS, wrs)}


def _ess_metrics(n=10, top_share=True):
    """is/ess 1, .8, .5, .3, .2, .08, .05 x4; w_max at the clip e^2 from step 7 on; clip_frac .1 from step 7."""
    ess = [1, 0.8, 0.5, 0.3, 0.2, 0.08, 0.05, 0.05, 0.05, 0.05]
    out = []
    for i in range(n):
        rec = {"step": i + 1, "is/ess": ess[i], "is/weight_max": math.exp(2.0) if i >= 6 else 2.0,
               "is/clip_frac": 0.1 if i >= 6 else 0.0, "is/weight_mean": 1.0}
        if top_share:
            rec["is/top_share"] = 0.1 * (i + 1)
        out.append(rec)
    return out


@pytest.fixture
def lab(tmp_path):
    """main: dpo and is-dpo, 2 seeds each (lr 2e-3); dpo at lr 3e-4 (1 seed); is-dpo [self-norm] (1 seed)."""
    root = make_lab(tmp_path / "lab")
    for seed in (0, 1):
        add_run(root, "dpo", seed, _curve(DPO[seed], 4.0 if seed == 0 else 2.0), per_prompt=_pp(DPO[seed], DPO_OFF))
        add_run(root, "is-dpo", seed, _curve(ISDPO[seed], 1.0), per_prompt=_pp(ISDPO[seed], IS_OFF),
                metrics=_ess_metrics(top_share=seed == 0))
    add_run(root, "dpo", 0, _curve(DPO[0], 1.0), lr=3e-4)
    add_run(root, "is-dpo", 0, _curve(ISDPO[0], 0.5), options={"is_self_normalize": True}, metrics=_ess_metrics())
    return root


def _summary(root):
    pts = agg.collect_points(root)
    s = agg.summarize(pts, drop_threshold=0.05)
    agg.attach_final_steps(s, pts)
    return pts, {r["name"]: r for r in s}


def test_smoothed_and_run_stats():
    """Centred 3-point moving average, 2 points at the ends: [0.5, .6, .9, .7, .65, .55] ->
    [.55, .6667, .7333, .75, .6333, .6]; peak .9, smoothed peak .75, final (.65+.55)/2 = .6, drop .15."""
    sm = agg.smoothed(DPO[0])
    assert sm == pytest.approx([0.55, 2 / 3, 2.2 / 3, 0.75, 1.9 / 3, 0.6])
    rows = [{"step": s, "win_rate": w, "sqrt_kl": s / 10, "fraction": s / 10, "kl_k1": s}
            for s, w in zip(STEPS, DPO[0])]
    st = agg.run_stats(rows[::-1])  # order of the rows does not matter
    assert st["peak"] == pytest.approx(0.9) and st["peak_fraction"] == pytest.approx(0.4)
    assert st["smoothed_peak"] == pytest.approx(0.75) and st["final"] == pytest.approx(0.6)
    assert st["drop"] == pytest.approx(0.15) and st["final_kl"] == 10 and st["final_steps"] == [8, 10]
    # the smoothed peak's checkpoint is step 6 (the window's centre), not the raw peak's step 4
    assert st["smoothed_peak_step"] == 6 and st["smoothed_peak_sqrt_kl"] == pytest.approx(0.6)
    assert st["peak_sqrt_kl"] == pytest.approx(0.4) and st["smoothed_peak_fraction"] == pytest.approx(0.6)


def test_summary_line_near_sqrt_kl_at_the_smoothed_peak(tmp_path):
    """dpo seeds 0/1 of the `lab` fixture's curves with KL = 0.4 * step: seed 0's smoothed peak sits at step 6
    (sqrt KL sqrt(2.4) = 1.549), seed 1's ([.6, .6667, .7667, .7333, .6333, .55]) at step 4 (sqrt(1.6) =
    1.265); mean 1.407. The raw peaks (steps 4 and 4 / 6) are not what the line reports."""
    root = make_lab(tmp_path / "lab")
    for seed in (0, 1):
        add_run(root, "dpo", seed, [(s, w, 0.4 * s) for s, w in zip(STEPS, DPO[seed])])
    _pts, s = _summary(root)
    d = s["dpo"]
    assert d["smoothed_peak_sqrt_kl"] == pytest.approx((math.sqrt(2.4) + math.sqrt(1.6)) / 2)
    line = sections.five_lines(list(s.values()), {}, 0.05)[1]
    assert line.endswith(f"near sqrt KL {(math.sqrt(2.4) + math.sqrt(1.6)) / 2:.2f}"), line


def test_summary_mean_se_over_seeds(lab):
    """dpo lr 2e-3, seeds 0/1: peaks .9/.8 -> .85 +- .05 (se of two values = |a-b|/2); smoothed peaks .75 /
    .7667 ([.6, .6667, .7667, .7333, .6333, .55]) -> .758333 +- .008333; finals .6/.55 -> .575 +- .025;
    final KL 4/2 -> 3 +- 1; drops .15/.216667 -> .183333 +- .033333 > .05: over-optimized."""
    _pts, s = _summary(lab)
    d = s["dpo lr=0.002"]
    assert d["n_seeds"] == 2 and d["ref_win_rate"] == pytest.approx(0.5)
    assert (d["peak_win_rate"], d["peak_win_rate_se"]) == pytest.approx((0.85, 0.05))
    assert (d["smoothed_peak"], d["smoothed_peak_se"]) == pytest.approx((4.55 / 6, 0.05 / 6))
    assert (d["final_win_rate"], d["final_win_rate_se"]) == pytest.approx((0.575, 0.025))
    assert (d["final_kl"], d["final_kl_se"]) == pytest.approx((3.0, 1.0))
    assert (d["drop"], d["drop_se"]) == pytest.approx((0.55 / 3, 0.1 / 3)) and d["over_optimized"]
    one = s["dpo lr=0.0003"]  # another learning rate: its own row, never a third seed of the first
    assert one["n_seeds"] == 1 and math.isnan(one["final_win_rate_se"]) and one["final_win_rate"] == pytest.approx(0.6)
    assert set(s) == {"dpo lr=0.002", "dpo lr=0.0003", "is-dpo lr=0.002", "is-dpo [self-norm] lr=0.002"}


def test_is_comparison_seeds_and_paired(lab):
    """is-dpo vs dpo (lr 2e-3): finals .72 +- .01 (.73/.71) vs .575 +- .025: diff .145, se over seeds
    sqrt(.01^2 + .025^2) = .026926. Paired: prompt i's final = base + offset, so d_i = .145 + (IS_OFF - DPO_OFF)
    = .145 + [.1, -.1, -.05, .05]: mean .145, se = sqrt(.025/3) / 2 = .0456435; paired t with df 3
    (t 3.182): .145 < 3.182 * .0456435 = .14525, not significant either. Over seeds, Welch df
    = (1e-4 + 6.25e-4)^2 / (1e-4^2 / 1 + 6.25e-4^2 / 1) = 1.312, t_{.975, 1.312} = 7.386;
    |.145| < 7.386 * .026926 = .1989: no clear difference (the old 2-se cut, .0539, said helped).
    is-dpo [self-norm] has one seed: untested over seeds, whatever the paired test says."""
    pts, s = _summary(lab)
    comps = agg.is_comparisons(list(s.values()), agg.collect_per_prompt(lab))
    by = {c["is"]["name"]: c for c in comps}
    c = by["is-dpo lr=0.002"]
    assert c["base"]["name"] == "dpo lr=0.002"
    assert c["diff"] == pytest.approx(0.145) and c["se_seeds"] == pytest.approx(math.sqrt(0.000725))
    assert c["paired_diff"] == pytest.approx(0.145) and c["paired_se"] == pytest.approx(math.sqrt(0.025 / 3) / 2)
    assert c["n_prompts"] == len(PROMPTS) and c["verdict"] == "no clear difference"
    assert c["df_seeds"] == pytest.approx(1.31201248) and c["t_seeds"] == pytest.approx(7.3855980, abs=1e-6)
    assert c["t_prompts"] == pytest.approx(3.1824463, abs=1e-6)  # df = 4 prompts - 1
    sn = by["is-dpo [self-norm] lr=0.002"]
    assert sn["base"]["name"] == "dpo lr=0.002" and math.isnan(sn["se_seeds"]) and sn["n_seeds"] == 1
    assert sn["verdict"] == "untested over seeds"
    # self-norm seed 0 final .73, every prompt at the checkpoint's rate; base per prompt .575 + DPO_OFF
    assert sn["paired_diff"] == pytest.approx(0.73 - 0.575)
    assert sn["paired_se"] == pytest.approx(math.sqrt((0.01 + 0.01 + 0.0025 + 0.0025) / 3) / 2)
    assert "(1 seed)" in sections.comparison_sentence(sn) and "(1 seed)" not in sections.comparison_sentence(c)
    assert "dpo lr=0.0003" not in {x["base"]["name"] for x in comps}
    # dpo lr 2e-3 over-optimized (drop .18 > .05): both comparisons sit in the first line; final KL
    # 1 / 3 (is-dpo) and .5 / 3 (self-norm); the sentence gives the relative change (1 - 3) / 3 = -67%
    assert sections.regime_overview(comps) == [
        "Where the base method over-optimized (2 comparisons, 1 of them on 1 seed): IS helped 0, hurt 0, "
        "no clear difference 1, untested over seeds 1; IS's final KL was 0.17-0.33 x the base's."]
    assert "final KL 1.00 vs 3.00 (-67%)" in sections.comparison_sentence(c)


def test_no_clear_difference_when_seeds_disagree(tmp_path):
    """Paired diff .05 with se 0 would say `helped`; over seeds the finals are .6/.5 vs .55/.45
    (diff .05, se sqrt(.05^2 + .05^2) = .0707 > .025): no clear difference."""
    root = make_lab(tmp_path / "lab")
    for seed, (a, b) in enumerate(((0.6, 0.55), (0.5, 0.45))):
        add_run(root, "is-dpo", seed, [(0, 0.5, 0), (5, a, 1), (10, a, 1)])
        add_run(root, "dpo", seed, [(0, 0.5, 0), (5, b, 1), (10, b, 1)])
    _pts, s = _summary(root)
    c = agg.is_comparisons(list(s.values()), agg.collect_per_prompt(root))[0]
    assert c["paired_diff"] == pytest.approx(0.05) and c["paired_se"] == pytest.approx(0.0, abs=1e-12)
    assert c["se_seeds"] == pytest.approx(math.sqrt(2) * 0.05) and c["verdict"] == "no clear difference"


def test_columns_from_spec_and_defaults(tmp_path):
    """Absent optional fields default: n_pairs None (all), scheduler / warmup from config.yaml, steps from
    summary.json; present ones are used; a run that differs only in n_pairs is its own configuration."""
    root = make_lab(tmp_path / "lab")
    a = add_run(root, "dpo", 0, [(0, 0.5, 0), (10, 0.6, 1)], steps=10)
    b = add_run(root, "dpo", 1, [(0, 0.5, 0), (4, 0.6, 1)], steps=4,
                extra_spec={"n_pairs": 40, "scheduler": "constant", "warmup_ratio": 0.0, "steps": 4})
    ra, rb = agg.read_run(a), agg.read_run(b)
    assert (ra["n_pairs"], ra["scheduler"], ra["warmup_ratio"], ra["steps"]) == (None, "cosine", 0.05, 10)
    assert (rb["n_pairs"], rb["scheduler"], rb["warmup_ratio"], rb["steps"]) == (40, "constant", 0.0, 4)
    # n_pairs, schedule and warmup co-vary with the steps: the steps alone name the runs apart
    names = sorted(r["name"] for r in agg.summarize(agg.collect_points(root), 0.05))
    assert names == ["dpo (10 steps)", "dpo (4 steps)"]
    add_run(root, "dpo", 2, [(0, 0.5, 0), (10, 0.6, 1)], steps=10, scheduler="constant")
    names = sorted(r["name"] for r in agg.summarize(agg.collect_points(root), 0.05))
    assert names == ["dpo constant (10 steps)", "dpo constant (4 steps)", "dpo cosine (10 steps)"]


def test_missing_spec_field_names_file(tmp_path):
    root = make_lab(tmp_path / "lab")
    run = add_run(root, "dpo", 0, [(0, 0.5, 0), (10, 0.6, 1)])
    spec = json.loads((run / "lab_spec.json").read_text())
    del spec["beta"]
    (run / "lab_spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"lab_spec\.json: missing field\(s\) beta"):
        agg.collect_points(root)


def test_base_method_and_option_names():
    assert agg.base_method("is-dpo") == "dpo" and agg.base_method("is-ipo") == "ipo"
    assert agg.base_method("dpo") is None and agg.base_method("online-dpo") is None
    rows = [dict(method="is-dpo", options=json.dumps(o), group="main", beta=0.1, lr=1e-3, optimizer="adamw",
                 n_pairs=None, scheduler="cosine", warmup_ratio=0.1, steps=100, config="{}")
            for o in ({}, {"is_self_normalize": True}, {"is_clip": 0.5})]
    assert sorted(agg.display_names(rows).values()) == ["is-dpo", "is-dpo [eps=0.5]", "is-dpo [self-norm]"]


def test_clip_table_from_options(tmp_path):
    """eps from the options column; eps 1 (the default) is the main grid's is-dpo at the same beta / lr."""
    root = make_lab(tmp_path / "lab")
    add_run(root, "is-dpo", 0, [(0, 0.5, 0), (10, 0.7, 1)])
    for eps, wr in ((0.5, 0.6), (2.0, 0.65)):
        add_run(root, "is-dpo", 0, [(0, 0.5, 0), (10, wr, 1)], options={"is_clip": eps}, group="clip")
    table = agg.clip_table(agg.summarize(agg.collect_points(root), 0.05))
    assert [(e, s["final_win_rate"]) for e, s in table] == [(0.5, 0.6), (1.0, 0.7), (2.0, 0.65)]


def test_mechanism_stats(lab):
    """is-dpo (2 seeds, same per-step records): median ESS of [1 .8 .5 .3 .2 .08 .05 x4] = (.08 + .2)/2 = .14;
    ESS < 0.1 first at step 6 of 10 (fraction .6); w_max at e^(2 eps) = e^2 in 4 of 10 steps; mean clip
    fraction .04; top share logged in seed 0 only: median of .1 ... 1.0 = .55."""
    train = agg.collect_train_metrics(lab)
    mech = agg.mechanism_stats(train)
    by = {r["name"]: mech[agg.config_key(r)] for r in train if agg.config_key(r) in mech}
    m = by["is-dpo lr=0.002"]
    assert m["ess_median"] == pytest.approx(0.14) and m["ess_min"] == pytest.approx(0.05)
    assert m["ess_below_0.1_at"] == pytest.approx(0.6) and m["n_below"] == 2 and m["n_runs"] == 2
    assert m["at_clip_frac"] == pytest.approx(0.4) and m["clip_frac_mean"] == pytest.approx(0.04)
    assert m["top_share_median"] == pytest.approx(0.55)
    # runs from before the top-share metric: None, and the report's sentence says so
    old = agg.mechanism_stats([{k: v for k, v in r.items() if k != "is/top_share"} for r in train])
    m = old[next(k for k in old if k[1] == "is-dpo" and k[5] == "{}")]
    assert m["top_share_median"] is None and m["ess_median"] == pytest.approx(0.14)
    row = next(r for r in agg.summarize(agg.collect_points(lab), 0.05) if r["name"] == "is-dpo lr=0.002")
    assert "not logged in these runs" in sections.mechanism_sentence(row["name"], row, m)


def test_report_regimes_section_and_tables(lab):
    out = report.write_report(lab)
    md = (lab / "report.md").read_text()
    assert "## Regimes" in md and "**No clear difference** (1 of 2)" in md and "**Untested over seeds** (1 of 2)" in md
    assert "| dpo lr=0.002 | 0.100 | 2 | 0.850 +- 0.050 | 0.758 +- 0.008 |" in md
    assert "no finished runs" not in md and len(out["summary_lines"]) == 5
    assert ("helped 0, hurt 0, no clear difference 1, untested over seeds 1 (of 2 comparisons)"
            in out["summary_lines"][-1])
    # one mechanism figure: the regime with IS runs (lr 2e-3); lr 3e-4 has DPO only
    assert (lab / "figures" / "fig_mechanism_00.png").stat().st_size > 1000
    assert not (lab / "figures" / "fig_mechanism_01.png").exists()
    rows = (lab / "csv" / "is_comparisons.csv").read_text().splitlines()
    assert len(rows) == 3


def test_report_regimes_only_and_empty(tmp_path):
    """A folder of regimes runs only (no main grid) has a real summary; an empty folder says so once."""
    root = make_lab(tmp_path / "reg", name="regimes")
    for lr in (1e-4, 2e-3):
        for m in ("dpo", "is-dpo"):
            add_run(root, m, 0, [(0, 0.5, 0), (5, 0.7, 1), (10, 0.6 if m == "dpo" else 0.7, 2)], lr=lr,
                    group="regimes", metrics=_ess_metrics() if m == "is-dpo" else None)
    out = report.write_report(root)
    assert out["summary_lines"][0].startswith("pi_ref win rate 0.500") and len(out["summary_lines"]) == 5
    md = (root / "report.md").read_text()
    assert "## Regimes" in md and "is-dpo lr=0.0001 vs dpo lr=0.0001" in md and "(1 seed)" in md
    empty = make_lab(tmp_path / "empty")
    out = report.write_report(empty)
    assert out["summary_lines"] == ["no finished runs"]
    assert (empty / "report.md").read_text().lower().count("no finished runs") == 1


def test_report_calibrate_group_states_how_the_rate_was_chosen(tmp_path):
    """The calibrate preset's DPO-only runs: a table of their own, titled from presets.GROUPS; the report
    quotes the preset's calibration for runs at its rate, and no IS comparison exists."""
    from isdaa.lab.presets import CALIBRATIONS, GROUPS, PAPER_LR

    root = make_lab(tmp_path / "cal", name="calibrate")
    lab = json.loads((root / "lab.json").read_text())
    cal = CALIBRATIONS["key-token"]
    lab["preset"]["calibration"] = {"lr": cal.lr, "measured": cal.measured, "calibrated": True, "text": cal.text()}
    (root / "lab.json").write_text(json.dumps(lab))
    for lr in (1e-4, PAPER_LR):
        add_run(root, "dpo", 0, [(0, 0.5, 0), (5, 0.75, 1), (10, 0.7, 2), (15, 0.4, 9)], beta=0.01, lr=lr,
                group="calibrate")
    report.write_report(root)
    md = (root / "report.md").read_text()
    assert f"## {GROUPS['calibrate'].title} (group `calibrate`)" in md
    assert f"Learning rate {PAPER_LR:g}: chosen once, on DPO alone at beta 0.01" in md
    assert "No IS run has a matching base-method run" in md
    # smoothed [.625 .65 .6167 .55] -> .65 at step 5 (sqrt KL 1, fraction 1/3); final (.7 + .4) / 2 = .55
    assert f"| adamw | {PAPER_LR:.6f} | 15 | dpo lr={PAPER_LR:g} | 0.010 | 1 | 0.750 | 0.650 | 1.00 | 0.33 |" in md


def test_report_covers_the_presets_runs_in_its_groups(tmp_path):
    """A folder shared by presets: a calibration run that is also the paper's DPO run is reported in the
    reported preset's group (its own lab_spec.json says `calibrate`), and a run of another preset is left
    out."""
    root = make_lab(tmp_path / "lab")
    shared = add_run(root, "dpo", 0, [(0, 0.5, 0.0), (10, 0.7, 1.0)], group="calibrate")
    add_run(root, "dpo", 0, [(0, 0.5, 0.0), (10, 0.6, 1.0)], lr=1e-4, group="calibrate")  # not in the preset
    spec = json.loads((shared / "lab_spec.json").read_text())
    preset = dict(json.loads((root / "lab.json").read_text())["preset"], runs=[dict(spec, group="main")])
    points = agg.collect_points(root, agg.preset_specs(preset))
    assert {(p["run_id"], p["group"]) for p in points} == {(shared.name, "main")}
    assert agg.collect_points(root, None) and len({p["run_id"] for p in agg.collect_points(root)}) == 2
    report.write_report(root, preset)
    rows = list(csv.DictReader((root / "csv" / "summary.csv").open()))
    assert [(r["group"], r["lr"]) for r in rows] == [("main", "0.002")]


def test_t_critical_values_and_welch_df():
    """Student-t two-sided 5% critical values (tables): df 4 -> 2.7764, df 2 -> 4.3027, df 255 -> 1.9693.
    Welch-Satterthwaite with se .01 and .02 over 3 seeds each: (1e-4 + 4e-4)^2 / ((1e-8 + 1.6e-7) / 2)
    = 2.5e-7 / 8.5e-8 = 2.9412; equal se over 3 + 3 seeds: df 4; both se 0: n_a + n_b - 2."""
    assert agg.t_critical(4) == pytest.approx(2.7764451, abs=1e-6)
    assert agg.t_critical(2) == pytest.approx(4.3026527, abs=1e-6)
    assert agg.t_critical(255) == pytest.approx(1.9693106, abs=1e-6)
    assert agg.welch_df(0.01, 3, 0.02, 3) == pytest.approx(2.5e-7 / 8.5e-8)
    assert agg.welch_df(0.013, 3, 0.013, 3) == pytest.approx(4.0)
    assert agg.welch_df(0.0, 3, 0.0, 3) == 4.0


def _seeds_lab(tmp_path, is_finals, base_finals, offsets=None):
    root = make_lab(tmp_path / "lab")
    for seed, (a, b) in enumerate(zip(is_finals, base_finals)):
        pp_is = {s: [a + o for o in offsets] for s in (5, 10)} if offsets else None
        add_run(root, "is-dpo", seed, [(0, 0.5, 0), (5, a, 1), (10, a, 1)], per_prompt=pp_is)
        add_run(root, "dpo", seed, [(0, 0.5, 0), (5, b, 1), (10, b, 1)])
    _pts, s = _summary(root)
    return agg.is_comparisons(list(s.values()), agg.collect_per_prompt(root))[0]


def test_verdict_uses_t_over_seeds_not_two_se(tmp_path):
    """3 + 3 seeds, finals IS .54/.56/.58 vs base .50/.52/.54: diff .04; se of each mean .02/sqrt(3) =
    .011547, se of the difference .016330; Welch df 4, t 2.7764: .04 < 2.7764 * .016330 = .04534: no clear
    difference (the old 2-se cut, .03266, said helped). Every prompt moves alike: paired diff .04, se 0.
    IS .55/.57/.59 (diff .05 > .04534): helped."""
    c = _seeds_lab(tmp_path / "a", (0.54, 0.56, 0.58), (0.50, 0.52, 0.54))
    assert c["diff"] == pytest.approx(0.04) and c["se_seeds"] == pytest.approx(0.02 * math.sqrt(2 / 3))
    assert c["df_seeds"] == pytest.approx(4.0) and c["t_seeds"] == pytest.approx(2.7764451, abs=1e-6)
    assert c["paired_diff"] == pytest.approx(0.04) and c["verdict"] == "no clear difference"
    assert "Welch df 4.0 (t 2.78)" in sections.comparison_sentence(c)
    assert _seeds_lab(tmp_path / "b", (0.55, 0.57, 0.59), (0.50, 0.52, 0.54))["verdict"] == "helped"
    assert _seeds_lab(tmp_path / "c", (0.45, 0.47, 0.49), (0.50, 0.52, 0.54))["verdict"] == "hurt"


def test_one_seed_is_untested_over_seeds(tmp_path):
    """One seed per side: the paired test over 4 prompts finds +.3 +- .0408 (offsets .05, -.05, 0, 0 around
    .8 vs .5; t_{.975, 3} = 3.182: significant), but with one seed the run-to-run variation is unknown:
    `untested over seeds`, never helped."""
    c = _seeds_lab(tmp_path, (0.8,), (0.5,), offsets=[0.05, -0.05, 0.0, 0.0])
    assert math.isnan(c["se_seeds"]) and c["paired_diff"] == pytest.approx(0.3)
    assert c["paired_se"] == pytest.approx(math.sqrt(0.005 / 3) / 2)
    assert c["verdict"] == "untested over seeds"
    assert sections.comparison_sentence(c).startswith("Untested over seeds:")


def test_versus_comparisons_pair_is_dpo_with_declared_arms(tmp_path):
    """IS-DPO against an arm declared as a mitigation (here DPO with rpo_eta 0.1, an option the registry
    has), at the same beta and regime only: finals .7/.72/.74 vs .6/.62/.64 over 3 seeds: diff .1, se
    sqrt(2) * .02 / sqrt(3) = .01633, Welch df 4 (t 2.776): helped. Plain DPO is not a declared arm."""
    root = make_lab(tmp_path / "lab")
    for seed, (a, b) in enumerate(((0.7, 0.6), (0.72, 0.62), (0.74, 0.64))):
        add_run(root, "is-dpo", seed, [(0, 0.5, 0), (5, a, 1), (10, a, 1)])
        add_run(root, "dpo", seed, [(0, 0.5, 0), (5, b, 1), (10, b, 1)], options={"rpo_eta": 0.1})
        add_run(root, "dpo", seed, [(0, 0.5, 0), (5, 0.5, 1), (10, 0.5, 1)])
        add_run(root, "dpo", seed, [(0, 0.5, 0), (5, b, 1), (10, b, 1)], options={"rpo_eta": 0.1}, beta=0.01)
    _pts, s = _summary(root)
    (c,) = agg.versus_comparisons(list(s.values()), [agg.arm_key("dpo", {"rpo_eta": 0.1})],
                                  agg.collect_per_prompt(root))
    assert c["base"]["name"] == "dpo [rpo_eta=0.1]" and c["base"]["beta"] == 0.1
    assert c["diff"] == pytest.approx(0.1) and c["se_seeds"] == pytest.approx(0.02 * math.sqrt(2 / 3))
    assert c["df_seeds"] == pytest.approx(4.0) and c["verdict"] == "helped"
    assert agg.versus_comparisons(list(s.values()), [], agg.collect_per_prompt(root)) == []
