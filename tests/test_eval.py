"""evaluate_policy / evaluate_run / `isdaa eval` on the tiny Llama (CPU, no downloads)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def length_reward(prompts, responses):
    """Golden reward for tests: number of words (ties are frequent)."""
    return [float(len(r.split())) for r in responses]


PROMPTS = [f"w{i} w{i + 1} good" for i in range(12)]
CHOSEN = ["w1 w2 w3", "yes", "no no", "w5", "a b c d", "the", "w7 w8", "is", "w9", "bad", "good good", "w3"]


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval(), AutoTokenizer.from_pretrained(tiny_dir)


def perturbed(model, scale: float, seed: int):
    import copy

    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return m


def small_cfg(**kw):
    from isdaa.evaluate.evaluator import EvalConfig

    return EvalConfig(**{"n_prompts": 10, "n_samples": 2, "max_new_tokens": 6, "kl_n_samples": 4, **kw})


def test_policy_equal_ref_has_zero_kl_and_writes_outputs(tiny, tmp_path):
    from isdaa.evaluate.evaluator import evaluate_policy
    from isdaa.evaluate.metrics import win_rate
    from isdaa.io import read_jsonl

    model, tok = tiny
    res = evaluate_policy(model, model, tok, PROMPTS, CHOSEN, length_reward, small_cfg(), out_dir=tmp_path)
    assert res["kl_k1"] == 0.0 and res["kl_k3"] == 0.0 and res["sqrt_kl"] == 0.0
    assert res["n_prompts"] == 10 and res["n_samples"] == 20 and len(res["per_prompt"]["win"]) == 10
    assert res["kl_sample_temperature"] == 1.0 and res["kl_source"] == "separate"
    recs = read_jsonl(tmp_path / "samples.jsonl")
    assert len(recs) == 20 and {"prompt_idx", "response", "reward", "logp_policy", "logp_ref"} <= set(recs[0])
    # the win rate is recomputable from the saved samples
    wr = win_rate([r["reward"] for r in recs], length_reward(PROMPTS[:10], CHOSEN[:10]),
                  [r["prompt_idx"] for r in recs])
    assert wr["win_rate"] == pytest.approx(res["win_rate"])
    assert res["reward_chosen"] == pytest.approx(np.mean(length_reward(None, CHOSEN[:10])))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["settings"]["temperature"] == 0.7 and "samples" not in saved
    assert (tmp_path / "eval.csv").exists() and "win rate" in (tmp_path / "summary.md").read_text()


def test_kl_positive_for_perturbed_policy_and_source_recorded(tiny):
    from isdaa.evaluate.evaluator import evaluate_policy

    model, tok = tiny
    pol = perturbed(model, 0.05, seed=1)
    res = evaluate_policy(pol, model, tok, PROMPTS, CHOSEN, length_reward, small_cfg())
    assert res["kl_k3"] > 0 and res["sqrt_kl"] == pytest.approx(np.sqrt(max(res["kl_k1"], 0)))
    rec = res["samples"][0]
    assert rec["logp_policy"] != rec["logp_ref"]
    reuse = evaluate_policy(pol, model, tok, PROMPTS, CHOSEN, length_reward, small_cfg(kl_source="eval"))
    assert reuse["kl_source"] == "eval" and reuse["kl_sample_temperature"] == 0.7
    lp = np.array([[s["logp_policy"], s["logp_ref"]] for s in reuse["samples"]])
    assert reuse["kl_k1"] == pytest.approx(np.mean(lp[:, 0] - lp[:, 1]))


@pytest.fixture()
def fake_run(tiny, tmp_path):
    """RUN/checkpoints/step-00000010 and step-00000020: the tiny model with perturbed weights."""
    from isdaa.tiny import save_tiny

    model, tok = tiny
    run = tmp_path / "run"
    for k, step in enumerate((10, 20)):
        ck = save_tiny(perturbed(model, 0.03 * (k + 1), seed=k), tok, run / "checkpoints" / f"step-{step:08d}")
        (ck / "trainer_state.json").write_text(json.dumps({"step": step, "examples_seen": 8 * step,
                                                           "epoch": step / 20, "total_steps": 20}))
    (run / "config.yaml").write_text("method: dpo\nbeta: 0.1\n")
    return run


def test_evaluate_run_skips_evaluated_checkpoints(tiny, fake_run):
    from isdaa.evaluate.evaluator import _load_causal_lm, evaluate_run

    model, tok = tiny
    loaded = []

    def load(path):
        loaded.append(path.name)
        return _load_causal_lm(path)

    rows = evaluate_run(fake_run, model, tok, PROMPTS, CHOSEN, length_reward, small_cfg(), load_model=load)
    assert loaded == ["step-00000010", "step-00000020"]
    assert [r["step"] for r in rows] == [10, 20] and rows[1]["examples_seen"] == 160
    assert (fake_run / "eval" / "step-00000010.json").exists() and (fake_run / "eval" / "table.csv").exists()
    loaded.clear()
    again = evaluate_run(fake_run, model, tok, PROMPTS, CHOSEN, length_reward, small_cfg(), load_model=load)
    assert loaded == [] and again == rows
    evaluate_run(fake_run, model, tok, PROMPTS, CHOSEN, length_reward, small_cfg(seed=5), load_model=load)
    assert loaded == ["step-00000010", "step-00000020"]  # other settings: redone


def test_cli_eval_run_and_policy(tiny_dir, fake_run, tmp_path):
    from click.testing import CliRunner

    from isdaa.cli import main
    from isdaa.io import atomic_write_jsonl

    data = tmp_path / "eval.jsonl"
    atomic_write_jsonl(data, [{"prompt": p, "chosen": c, "rejected": "x"} for p, c in zip(PROMPTS, CHOSEN)])
    common = ["--ref", str(tiny_dir), "--reward", "test_eval:length_reward", "--data", str(data),
              "--n-prompts", "8", "--max-new-tokens", "5", "--kl-samples", "2"]
    r = CliRunner().invoke(main, ["eval", "--run", str(fake_run), *common])
    assert r.exit_code == 0, r.output
    assert "| 20 | 160 |" in r.output
    eval_dir = fake_run / "eval"
    fits = json.loads((eval_dir / "fits.json").read_text())
    assert set(fits) == {"rl", "bon"} and (eval_dir / "winrate_vs_sqrt_kl.png").stat().st_size > 1000
    mtime = (eval_dir / "step-00000010.json").stat().st_mtime_ns
    r = CliRunner().invoke(main, ["eval", "--run", str(fake_run), *common])
    assert r.exit_code == 0 and (eval_dir / "step-00000010.json").stat().st_mtime_ns == mtime

    out = tmp_path / "single"
    r = CliRunner().invoke(main, ["eval", "--policy", str(tiny_dir), "--out", str(out), "--alpaca",
                                  str(tmp_path / "alpaca.json"), *common])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "eval.json").read_text())
    assert abs(res["kl_k1"]) < 1e-4 and res["n_prompts"] == 8  # separate copies: round-off only
    alpaca = json.loads((tmp_path / "alpaca.json").read_text())
    assert len(alpaca) == 8 and set(alpaca[0]) == {"instruction", "output", "generator"}
    assert alpaca[0]["instruction"] == PROMPTS[0]


def test_plot_points_from_tables(fake_run, tiny):
    """load_eval_points reads method/beta from config.yaml; the plot is written."""
    from isdaa.evaluate.evaluator import evaluate_run
    from isdaa.plots import load_eval_points, plot_winrate_vs_sqrt_kl

    model, tok = tiny
    evaluate_run(fake_run, model, tok, PROMPTS, CHOSEN, length_reward, small_cfg())
    pts = load_eval_points([fake_run])
    assert [(p["method"], p["beta"], p["step"]) for p in pts] == [("dpo", 0.1, 10), ("dpo", 0.1, 20)]
    pts2 = [{**p, "method": "is-dpo", "beta": 0.05} for p in pts]
    plot_winrate_vs_sqrt_kl(pts + pts2, fake_run / "fig.png", fit_form="bon")
    assert (fake_run / "fig.png").stat().st_size > 1000


def test_golden_win_rate_and_kl_helpers_by_hand():
    """Two prompts, chosen rewards (word counts) 3 and 1. Samples: prompt 0 -> 4 words (win), 3 words (tie);
    prompt 1 -> 1 word (tie), 0 words (loss). Per prompt (1 + 0.5)/2 = 0.75 and (0.5 + 0)/2 = 0.25:
    WR 0.5, se = std([0.75, 0.25], ddof=1)/sqrt(2) = 0.25. KL from the eval samples (kl_source="eval"):
    l = [0.5, -0.1, 0.2, 0.0] -> k1 = 0.15, at the win-rate temperature and top-p."""
    from isdaa.evaluate.evaluator import EvalConfig, golden_win_rate, kl_divergence
    from isdaa.evaluate.sampling import Sample

    texts = [(0, "a b c d"), (0, "a b c"), (1, "a"), (1, "")]
    samples = [Sample(i, [1], t, True, None) for i, t in texts]
    wins = golden_win_rate(samples, ["p0", "p1"], ["x y z", "x"], length_reward)
    assert wins["win_rate"] == pytest.approx(0.5) and wins["se"] == pytest.approx(0.25)
    assert wins["per_prompt"].tolist() == [0.75, 0.25] and wins["chosen_rewards"].tolist() == [3.0, 1.0]
    cfg = EvalConfig(kl_source="eval", temperature=0.7, top_p=0.9)
    eval_logps = (np.array([0.5, -0.1, 0.2, 0.0]), np.zeros(4), wins["prompt_index"])
    kl = kl_divergence(None, None, None, [[1], [2]], cfg, eval_logps, skip_kl=False, pad_id=0)
    assert kl["k1"] == pytest.approx(0.15) and (kl["sample_temperature"], kl["sample_top_p"]) == (0.7, 0.9)
