"""trainer_state.json in transformers' format (`transformers.TrainerState`), so that the tools TRL users
have read an isdaa run unchanged: `TrainerState.load_from_json`, `state["global_step"]`, and
`state["log_history"]`, one entry per logged step as transformers writes it:

    {"loss": ..., "grad_norm": ..., "learning_rate": ..., "rewards/chosen": ..., "epoch": ..., "step": N}
    {"eval_loss": ..., "eval_rewards/accuracies": ..., "epoch": ..., "step": N}       (an evaluated step)
    {"train_runtime": ..., "train_samples_per_second": ..., "train_steps_per_second": ...,
     "train_loss": ..., "epoch": ..., "step": N}                                        (the end of training)

The entries come from metrics.jsonl (the run's one record of what was logged), so a resumed run's history
holds each step once. isdaa's own metrics (is/*, drift/*, tokens_per_s, ...) ride along under their names.
Fields isdaa does not compute (total_flos, best_metric) keep TrainerState's defaults.
"""

from __future__ import annotations

import math

RENAMED = {"lr": "learning_rate"}
NOT_LOGGED = {"step", "epoch"}


def log_entries(record: dict) -> list[dict]:
    """One metrics.jsonl record -> its log_history entries: the training entry, then the evaluation
    entry (eval/x -> eval_x, as transformers prefixes evaluation metrics) when the step has one."""
    train, evaluation = {}, {}
    for k, v in record.items():
        if k in NOT_LOGGED or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if k.startswith("eval/"):
            evaluation["eval_" + k[len("eval/"):]] = v
        else:
            train[RENAMED.get(k, k)] = v
    tail = {"epoch": record.get("epoch", 0.0), "step": record["step"]}
    return [{**d, **tail} for d in (train, evaluation) if d]


def run_state(out, **kw) -> dict:
    """`hf_trainer_state` of the run in folder `out`, from its metrics.jsonl (keywords: see there)."""
    from pathlib import Path

    from isdaa.io import read_jsonl

    metrics_file = Path(out) / "metrics.jsonl"
    return hf_trainer_state(read_jsonl(metrics_file, tolerate_partial_tail=True) if metrics_file.exists() else [],
                            **kw)


def hf_trainer_state(records: list[dict], *, step: int, epoch: float, cfg, total_steps: int, tokens_seen: int,
                     final: dict | None = None) -> dict:
    """transformers' TrainerState fields for a run at `step`: `records` are metrics.jsonl's records up to
    it; `final` (the end of training) adds transformers' closing entry (train_runtime, train_loss, ...)."""
    history = [e for r in records if r.get("step", 0) <= step for e in log_entries(r)]
    if final is not None:
        history.append({**final, "epoch": epoch, "step": step})
    return {
        "best_global_step": None, "best_metric": None, "best_model_checkpoint": None,
        "epoch": epoch, "eval_steps": cfg.eval_steps or 0, "global_step": step,
        "is_hyper_param_search": False, "is_local_process_zero": True, "is_world_process_zero": True,
        "log_history": history, "logging_steps": cfg.logging_steps, "max_steps": total_steps,
        "num_input_tokens_seen": tokens_seen, "num_train_epochs": math.ceil(cfg.epochs),
        "save_steps": cfg.save_steps or 0, "stateful_callbacks": {}, "train_batch_size": cfg.micro_batch_size,
        "trial_name": None, "trial_params": None,
    }


def closing_entry(*, runtime_s: float, steps: int, examples: int, loss_sum: float, loss_steps: int) -> dict:
    """transformers' last log_history entry: the run's wall time, throughput and mean training loss
    (over the optimizer steps this process ran since the start or the resume)."""
    runtime_s = max(runtime_s, 1e-9)
    return {"train_runtime": round(runtime_s, 4), "train_samples_per_second": round(examples / runtime_s, 3),
            "train_steps_per_second": round(steps / runtime_s, 3),
            "train_loss": loss_sum / loss_steps if loss_steps else float("nan")}
