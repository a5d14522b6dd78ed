"""The lab's pure pieces: presets, the report's aggregation, the online DPO batch source."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isdaa.lab import aggregate
from isdaa.lab.keytoken import KeyTokenTask


def _pt(run_id, label, step, wr, kl, seed=0, beta=0.1, total=20):
    return {"run_id": run_id, "method": label, "label": label, "name": label, "group": "main", "beta": beta,
            "seed": seed, "lr": 2e-3, "optimizer": "adamw", "options": "{}", "n_pairs": None,
            "scheduler": "constant", "warmup_ratio": 0.1, "steps": total, "config": "{}", "step": step,
            "fraction": step / total,
            "win_rate": wr, "win_rate_se": 0.02, "kl_k1": kl, "sqrt_kl": math.sqrt(kl)}


def _run(run_id, label, wrs, kl_last, seed=0):
    return [_pt(run_id, label, 5 * i, w, kl_last * i / 4, seed=seed) for i, w in enumerate(wrs)]


def test_summarize_peak_final_drop():
    """dpo, seeds a / b at steps 0, 5, ..., 20: [.5 .75 .6 .55 .55] and [.5 .85 .7 .65 .65].
    a: peak .75 at fraction .25; 3-point moving average [.625 .6167 .6333 .5667 .55] -> smoothed peak
    .6333; final = mean of the last 2 = .55; drop .0833. b: peak .85, smoothed [.675 .6833 .7333 .6667 .65]
    -> .7333, final .65, drop .0833. Over seeds: peak .8 +- .05, smoothed .6833 +- .05, final .6 +- .05
    (std .0707), final KL (4 + 2) / 2 = 3, drop .0833 > .05: over-optimized. is-dpo (1 seed) rises to .7."""
    pts = (_run("a", "dpo", [0.5, 0.75, 0.6, 0.55, 0.55], 4.0)
           + _run("b", "dpo", [0.5, 0.85, 0.7, 0.65, 0.65], 2.0, seed=1)
           + _run("c", "is-dpo", [0.5, 0.6, 0.65, 0.7, 0.7], 0.49))
    rows = {s["name"]: s for s in aggregate.summarize(pts, drop_threshold=0.05)}
    d = rows["dpo"]
    assert d["n_seeds"] == 2 and d["ref_win_rate"] == pytest.approx(0.5)
    assert (d["peak_win_rate"], d["peak_win_rate_se"]) == pytest.approx((0.8, 0.05))
    assert d["peak_fraction"] == pytest.approx(0.25) and d["peak_sqrt_kl"] == pytest.approx((1 + math.sqrt(0.5)) / 2)
    assert (d["smoothed_peak"], d["smoothed_peak_se"]) == pytest.approx((4.1 / 6, 0.05))
    assert (d["final_win_rate"], d["final_win_rate_se"]) == pytest.approx((0.6, 0.05))
    assert d["final_win_rate_std"] == pytest.approx(0.1 / math.sqrt(2))
    assert d["final_kl"] == pytest.approx(3.0) and d["drop"] == pytest.approx(0.25 / 3) and d["over_optimized"]
    i = rows["is-dpo"]
    assert i["drop"] == pytest.approx(0.0) and not i["over_optimized"] and math.isnan(i["final_win_rate_se"])
    assert i["peak_fraction"] == pytest.approx(0.75) and i["final_win_rate"] == pytest.approx(0.7)
    (c,) = aggregate.is_comparisons(list(rows.values()))
    # one seed and no per-prompt records: no se to judge the diff .1 by
    assert c["diff"] == pytest.approx(0.1) and c["verdict"] == "untested"


def test_online_source_rows_and_determinism():
    import torch

    from isdaa.lab.online import OnlineDPOSource

    task = KeyTokenTask()
    tok = task.build_tokenizer()
    model = task.build_model(tok, seed=0).eval()
    prompts = task.make_prompts(10, seed=0)
    src = OnlineDPOSource(tokenizer=tok, prompts=prompts, reward=task.golden_reward,
                          max_new_tokens=task.max_response_tokens, prompts_per_step=4, seed=3)
    # a permutation per pass over the pool: steps 0-1 cover 8 distinct prompts, step 2 wraps around
    seen = src.prompts_for_step(0) + src.prompts_for_step(1)
    assert len(set(seen)) == 8 and len(src.prompts_for_step(2)) == 4
    torch.manual_seed(0)
    rows = src(5, model, tok)
    assert rows == src(5, model, tok)  # seeded by (seed, step): resumable
    assert len(rows) == src.stats[-1]["pairs"] <= 4  # pairs with an EOS-only response are left out
    for r in rows:
        assert {"prompt", "chosen", "rejected", "chosen_logps", "rejected_logps"} <= set(r)
        assert r["prompt"] in prompts and np.isfinite(r["chosen_logps"])


def test_compiled_offline_runs_only_where_it_pays(tmp_path, monkeypatch):
    """Presets of tens of runs compile their offline runs (eager attention) where the machine can; the quick
    and micro presets and every online run (sampling each step) keep the model as loaded."""
    from isdaa.lab import pipeline
    from isdaa.lab.presets import get_preset
    from isdaa.train.models import compile_unavailable

    monkeypatch.setattr(pipeline, "offline_steps", lambda lab, p, spec: 10)
    lab = pipeline.LabDir(tmp_path)
    can = compile_unavailable() is None
    for name, offline_compiled in (("paper", can), ("regimes", can), ("quick", False), ("micro", False)):
        p = get_preset(name)
        for spec in p.runs:
            cfg = pipeline.pref_config(lab, p, spec)
            fast = offline_compiled and not spec.online
            assert cfg.compile is fast, (name, spec.run_id)
            assert cfg.model.attn_implementation == ("eager" if fast else None), (name, spec.run_id)


def test_log_tick_labels_span_a_decade_without_overflow():
    """Minor tick labels only on a log axis spanning less than a decade; an axis from ~1e-308 (a weight
    of 0 plotted) gets none and no overflow warning (hi / lo overflowed in a sweep's report)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from isdaa.lab.figures import _plain_log_ticks

    fig, ax = plt.subplots()
    ax.set_yscale("log")
    try:
        for (lo, hi), labelled in (((0.5, 2.0), True), ((0.1, 10.0), False), ((5e-324, 1.0), False)):
            ax.set_ylim(lo, hi)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                _plain_log_ticks(ax)
            assert isinstance(ax.yaxis.get_minor_formatter(), NullFormatter) is not labelled, (lo, hi)
    finally:
        plt.close(fig)


def _fig3_point(method, seed, step, sqrt_kl, win=0.7, beta=0.01):
    row = {"group": "main", "method": method, "beta": beta, "lr": 3e-4, "optimizer": "adamw", "options": "{}",
           "n_pairs": None, "scheduler": "cosine", "warmup_ratio": 0.08, "steps": 100, "config": "{}"}
    return {**row, "run_id": f"{method}_s{seed}", "seed": seed, "step": step, "name": method,
            "sqrt_kl": sqrt_kl, "win_rate": win, "win_rate_se": 0.01}


def test_fig3_zooms_where_a_few_runs_stretch_the_axis(tmp_path):
    """zoom_limit = 2 x the median over configurations of the last checkpoint's sqrt KL (mean over seeds),
    only when some point lies beyond 1.5x of it. Hand-computed: last sqrt KL a: (1.0 + 2.0) / 2 = 1.5,
    b: 1.0, c: 12.0 -> median 1.5 -> limit 3.0; c's 12 > 4.5, so the panel gets a zoomed copy."""
    from matplotlib.image import imread

    from isdaa.lab.figures import fig_winrate_vs_kl, zoom_limit

    pt = _fig3_point
    rows = [pt("a", 0, 0, 0.0), pt("a", 0, 50, 3.5), pt("a", 0, 100, 1.0), pt("a", 1, 100, 2.0),
            pt("b", 0, 0, 0.0), pt("b", 0, 100, 1.0), pt("c", 0, 0, 0.0), pt("c", 0, 100, 12.0, win=0.0)]
    assert zoom_limit(rows) == pytest.approx(3.0)
    tame = [r for r in rows if r["method"] != "c"]  # median of 1.5 and 1.0 = 1.25 -> 2.5; max 3.5 < 3.75
    assert zoom_limit(tame) is None
    zoomed = imread(fig_winrate_vs_kl(rows, tmp_path / "z")).shape[0]
    flat = imread(fig_winrate_vs_kl(tame, tmp_path / "f")).shape[0]
    assert zoomed > 1.6 * flat  # a second row of panels
