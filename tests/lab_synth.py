"""Synthetic lab folders for the report tests: fake finished runs with known numbers, in the formats the
pipeline writes (lab.json, runs/<id>/lab_spec.json, summary.json, config.yaml, metrics.jsonl,
eval/reference.json + eval/step-XXXXXXXX.json with the evaluator's per-prompt records)."""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS = ["f2 f1 k4 k1 f0 f3 f5 f6 f7 f8 =", "k2 f1 k5 f0 f6 f4 f3 f0 f1 f2 =",
           "f0 k3 f1 k7 k8 f2 f3 f4 f5 f6 =", "f1 f2 f3 k9 f4 k0 f5 f6 f7 f8 ="]


def preset_dict(name="synth", overopt_drop=0.05) -> dict:
    return {"name": name, "n_sft": 100, "sft_epochs": 1, "sft_batch": 8, "sft_lr": 1e-3, "n_pairs": 50,
            "n_eval_prompts": len(PROMPTS), "epochs": 2, "batch": 8, "scheduler": "constant", "warmup_ratio": 0.1,
            "save_fractions": [0.2, 0.4, 0.6, 0.8, 1.0],
            "evaluation": {"n_prompts": len(PROMPTS), "n_samples": 2, "temperature": 0.7, "top_p": 0.95,
                           "n_kl_samples": 1, "n_ratio_pairs": 8},
            "runs": [], "task_seed": 0, "overopt_drop": overopt_drop, "description": "synthetic"}


def make_lab(root: Path, name="synth", overopt_drop=0.05) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lab = {"preset": preset_dict(name, overopt_drop),
           "environment": {"reward_formula": "coverage - ...", "model": {"num_layers": 2, "hidden_size": 32}},
           "task": "isdaa.lab.keytoken:KeyTokenTask"}
    (root / "lab.json").write_text(json.dumps(lab))
    (root / "data" / "golden_eval").mkdir(parents=True, exist_ok=True)
    (root / "data" / "golden_eval" / "pairs.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "chosen": "k1", "rejected": "f1"}) + "\n" for p in PROMPTS))
    (root / "runs").mkdir(exist_ok=True)
    return root


def add_run(root: Path, method: str, seed: int, curve: list[tuple[int, float, float]], *, beta=0.1, lr=2e-3,
            optimizer="adamw", options=None, group="main", steps=None, per_prompt=None, metrics=None,
            extra_spec=None, scheduler="cosine", warmup_ratio=0.05) -> Path:
    """One finished run. curve: [(step, win rate, KL k1)], step 0 = pi_ref; per_prompt: {step: [win per
    prompt]} (default: every prompt at the checkpoint's win rate); metrics: per-step trainer records."""
    options = options or {}
    opts = "".join(f"_{k}={v}" for k, v in sorted(options.items()))
    run_id = f"{method}_b{beta:g}_lr{lr:g}_{optimizer}{opts}_{group}_s{seed}"
    spec = {"method": method, "beta": beta, "seed": seed, "lr": lr, "optimizer": optimizer, "options": options,
            "group": group, "run_id": run_id, "label": method, **(extra_spec or {})}
    run = root / "runs" / run_id
    (run / "eval").mkdir(parents=True)
    total = steps or max(s for s, _, _ in curve)
    (run / "lab_spec.json").write_text(json.dumps(spec))
    lab = json.loads((root / "lab.json").read_text())  # the preset lists its runs, as the pipeline writes it
    lab["preset"]["runs"].append(spec)
    (root / "lab.json").write_text(json.dumps(lab))
    (run / "summary.json").write_text(json.dumps({"status": "finished", "total_steps": total}))
    (run / "config.yaml").write_text(f"optim:\n  scheduler: {scheduler}\n  warmup_ratio: {warmup_ratio}\n")
    (run / "lab_done.json").write_text(json.dumps({"run": spec, "summary": {"total_steps": total}}))
    for step, wr, kl in curve:
        name = "reference" if step == 0 else f"step-{step:08d}"
        win = (per_prompt or {}).get(step, [wr] * len(PROMPTS))
        rec = {"win_rate": wr, "win_rate_se": 0.02, "tie_rate": 0.0, "reward_policy": 0.0, "reward_chosen": 0.0,
               "kl": {"l_median": kl}, "kl_k1": kl, "kl_k3": kl, "mean_length": 3.0, "finished_frac": 1.0,
               "per_prompt": {"win": win}, "name": name}
        if step:
            rec.update(step=step, examples_seen=8 * step)
        (run / "eval" / f"{name}.json").write_text(json.dumps(rec))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"loss": 0.5, **m}) + "\n" for m in metrics or []))
    return run
