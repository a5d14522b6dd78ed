"""The lab's pure pieces: presets, the report's aggregation, the online DPO batch source."""

from __future__ import annotations

import math

import numpy as np
import pytest

from isdaa.lab import report, task


def _pt(run_id, label, step, wr, kl, seed=0, beta=0.1, total=10):
    return {"run_id": run_id, "method": label, "label": label, "group": "main", "beta": beta, "seed": seed,
            "lr": 2e-3, "optimizer": "adamw", "step": step, "fraction": step / total, "win_rate": wr,
            "win_rate_se": 0.02, "kl_k1": kl, "sqrt_kl": math.sqrt(kl)}


def test_summarize_peak_final_drop():
    """Two seeds of dpo: mean curve 0.5, 0.8, 0.6 at fractions 0, 0.5, 1 -> peak 0.8 at 0.5, final
    0.6 (std of 0.55/0.65 = 0.0707), drop 0.2 > 0.05: over-optimized. is-dpo rises monotonically."""
    pts = [
        _pt("a", "dpo", 0, 0.5, 0.0), _pt("a", "dpo", 5, 0.75, 1.0), _pt("a", "dpo", 10, 0.55, 4.0),
        _pt("b", "dpo", 0, 0.5, 0.0, seed=1), _pt("b", "dpo", 5, 0.85, 1.0, seed=1),
        _pt("b", "dpo", 10, 0.65, 2.0, seed=1),
        _pt("c", "is-dpo", 0, 0.5, 0.0), _pt("c", "is-dpo", 5, 0.6, 0.25), _pt("c", "is-dpo", 10, 0.7, 0.49),
    ]
    rows = {s["label"]: s for s in report.summarize(pts, drop_threshold=0.05)}
    d = rows["dpo"]
    assert d["n_seeds"] == 2 and d["ref_win_rate"] == pytest.approx(0.5)
    assert d["peak_win_rate"] == pytest.approx(0.8) and d["peak_fraction"] == pytest.approx(0.5)
    assert d["peak_sqrt_kl"] == pytest.approx(1.0)
    assert d["final_win_rate"] == pytest.approx(0.6) and d["final_win_rate_std"] == pytest.approx(0.1 / math.sqrt(2))
    assert d["final_win_rate_se"] == pytest.approx(0.05)  # std / sqrt(2)
    assert d["final_kl"] == pytest.approx(3.0) and d["drop"] == pytest.approx(0.2) and d["over_optimized"]
    i = rows["is-dpo"]
    assert i["drop"] == pytest.approx(0.0) and not i["over_optimized"] and math.isnan(i["final_win_rate_std"])
    assert i["final_win_rate_se"] == pytest.approx(0.02)  # one seed: the evaluation's se over prompts
    lines = report.is_comparisons(list(rows.values()))
    # diff 0.1, 2 se = 2 sqrt(0.05^2 + 0.02^2) = 0.1077 -> no clear difference
    assert len(lines) == 1 and "no clear difference" in lines[0]


def test_online_source_rows_and_determinism():
    import torch

    from isdaa.lab.online import OnlineDPOSource

    tok = task.build_tokenizer()
    model = task.build_model(tok, seed=0).eval()
    prompts = task.make_prompts(10, seed=0)
    src = OnlineDPOSource(tokenizer=tok, prompts=prompts, prompts_per_step=4, seed=3)
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
