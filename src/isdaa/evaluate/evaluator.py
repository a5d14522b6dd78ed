"""Golden-reward evaluation of one policy (`evaluate_policy`) and of every checkpoint of a training run
(`evaluate_run`), per docs/METHOD.md "Evaluation".

Win rate: n samples per prompt at (temperature, top-p) scored by the golden reward against the
dataset's chosen response. KL(pi_theta || pi_ref): by default from SEPARATE samples of pi_theta at
temperature 1 without top-p (unbiased); `kl_source="eval"` reuses the win-rate samples as the authors'
evaluator did (biased: not samples of pi_theta), and the output records which was used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isdaa.evaluate.metrics import kl_estimates, win_rate
from isdaa.evaluate.rewards import RewardFn, reward_name, score
from isdaa.evaluate.sampling import encode_prompts, sample_logps, sample_responses
from isdaa.io import atomic_write_csv, atomic_write_json, atomic_write_jsonl, atomic_write_text
from isdaa.logprobs import score_responses


@dataclass
class EvalConfig:
    """Protocol settings (defaults: the paper's Appendix D and the authors' evaluator)."""

    n_prompts: int | None = 512      # first N prompts of the evaluation set (None: all)
    n_samples: int = 2               # samples per prompt for the win rate
    temperature: float = 0.7         # win-rate sampling temperature
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 256            # sampling and forward batch size
    kl_source: str = "separate"      # "separate": fresh T=kl_temperature samples; "eval": reuse WR samples
    kl_n_samples: int = 1            # samples per prompt for KL ("separate" only; paper: 1)
    kl_temperature: float = 1.0      # 1.0 = samples of pi_theta itself (unbiased)
    kl_trim: float = 0.1             # tail fraction cut for the trimmed-mean KL summary
    plot_kl: str = "k1"              # estimator behind `sqrt_kl` (plots/fits): "k1" | "k3"
    backend: str = "hf"              # sampling backend: "hf" | "vllm"
    policy_logps: str = "auto"       # "generate": recorded while sampling (saves a forward), "forward":
                                     # same code path as the reference's; "auto": generate iff float32

    def __post_init__(self):
        if self.kl_source not in ("separate", "eval"):
            raise ValueError(f"kl_source must be 'separate' or 'eval', got {self.kl_source!r}")
        if self.plot_kl not in ("k1", "k3"):
            raise ValueError(f"plot_kl must be 'k1' or 'k3', got {self.plot_kl!r}")
        if self.n_samples < 1 or self.kl_n_samples < 1 or self.max_new_tokens < 1:
            raise ValueError("n_samples, kl_n_samples and max_new_tokens must be >= 1")
        if self.policy_logps not in ("auto", "generate", "forward"):
            raise ValueError(f"policy_logps must be auto | generate | forward, got {self.policy_logps!r}")
        if not (0 < self.top_p <= 1) or self.temperature < 0 or self.kl_temperature <= 0:
            raise ValueError("need 0 < top_p <= 1, temperature >= 0, kl_temperature > 0")

    def key(self) -> str:
        """Hash of the settings that change the numbers (a saved result is reused only if equal)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("batch_size", "policy_logps")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _rows(prompt_ids, samples):
    return [prompt_ids[s.prompt_index] for s in samples], [s.response_ids for s in samples]


def _policy_logps(policy, prompt_ids, samples, cfg, pad_id) -> np.ndarray:
    return sample_logps(policy, prompt_ids, samples, cfg.batch_size, pad_id, cfg.policy_logps)


def evaluate_policy(
    policy,
    ref,
    tokenizer,
    prompts: Sequence[str],
    chosen: Sequence[str],
    reward: RewardFn,
    cfg: EvalConfig | None = None,
    out_dir: str | Path | None = None,
    chosen_rewards: Sequence[float] | None = None,
    skip_kl: bool = False,
) -> dict:
    """Evaluate an in-memory `policy` against `ref` (both causal LMs sharing `tokenizer`).

    prompts / chosen: the evaluation set (the first `cfg.n_prompts` are used); reward: golden reward
    `reward(prompts, responses) -> list[float]`; chosen_rewards: precomputed rewards of `chosen` (saves
    reward calls across checkpoints); skip_kl: KL is 0 by construction (policy is ref; also implied
    when `policy is ref`). Policy log-probs are those recorded during generation (raw logits; they
    match a full forward to float32 round-off), reference log-probs come from a forward of `ref` on
    the exact sampled ids.
    Returns `eval_record`'s dict: win_rate, win_rate_se, tie_rate, reward_policy, reward_chosen, kl
    {k1, k3, ...}, sqrt_kl (from cfg.plot_kl), mean_length, finished_frac, settings, timings,
    `per_prompt` arrays (win, k1, k3; for bootstrap fits) and `samples`: one record per win-rate sample
    (prompt_idx, response, response_ids, reward, logp_policy, logp_ref, length, finished). With
    `out_dir`, writes eval.json (all but samples), samples.jsonl, eval.csv and summary.md there.
    """
    cfg = cfg or EvalConfig()
    n = len(prompts) if cfg.n_prompts is None else min(cfg.n_prompts, len(prompts))
    prompts, chosen = list(prompts[:n]), list(chosen[:n])
    prompt_ids = encode_prompts(tokenizer, prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    skip_kl = skip_kl or policy is ref
    t0 = time.perf_counter()
    samples = sample_responses(policy, tokenizer, prompt_ids, cfg.n_samples, cfg.temperature, cfg.top_p,
                               cfg.max_new_tokens, cfg.seed, cfg.batch_size, cfg.backend)
    t_sample = time.perf_counter() - t0
    wins = golden_win_rate(samples, prompts, chosen, reward, chosen_rewards)
    t_reward = time.perf_counter() - t0 - t_sample
    lp_pol = _policy_logps(policy, prompt_ids, samples, cfg, pad_id)
    p_ids, r_ids = _rows(prompt_ids, samples)
    lp_ref = lp_pol if skip_kl else score_responses(ref, p_ids, r_ids, cfg.batch_size, pad_id=pad_id)
    kl = kl_divergence(policy, ref, tokenizer, prompt_ids, cfg, (lp_pol, lp_ref, wins["prompt_index"]), skip_kl,
                       pad_id)
    timings = {"sample": t_sample, "reward": t_reward, "total": time.perf_counter() - t0}
    result = eval_record(cfg, reward, samples, wins, kl, lp_pol, lp_ref, timings)
    if out_dir is not None:
        write_eval_outputs(result, out_dir)
    return result


def golden_win_rate(samples, prompts, chosen, reward: RewardFn, chosen_rewards=None) -> dict:
    """Golden rewards of the samples and of the chosen responses (computed unless given) and
    `metrics.win_rate` of the former against the latter; `rewards` (S,), `chosen_rewards` (N,) and
    `prompt_index` (S,) numpy arrays come with it."""
    idx = np.array([s.prompt_index for s in samples])
    rewards = np.array(score(reward, [prompts[i] for i in idx], [s.text for s in samples]))
    if chosen_rewards is None:
        chosen_rewards = score(reward, prompts, chosen)
    chosen_rewards = np.asarray(chosen_rewards, dtype=np.float64)[: len(prompts)]
    return {**win_rate(rewards, chosen_rewards, idx), "rewards": rewards, "chosen_rewards": chosen_rewards,
            "prompt_index": idx}


def kl_divergence(policy, ref, tokenizer, prompt_ids, cfg: EvalConfig, eval_logps, skip_kl: bool,
                  pad_id: int) -> dict:
    """`metrics.kl_estimates` from the samples `cfg.kl_source` names, with the temperature and top-p
    they were drawn at: "eval" reuses `eval_logps` = (policy, ref log-probs, prompt index) of the
    win-rate samples (the authors' evaluator; biased); "separate" draws `kl_n_samples` fresh samples
    per prompt at `kl_temperature`, no top-p (all zeros when `skip_kl`: KL is 0 by construction)."""
    n = len(prompt_ids)
    if cfg.kl_source == "eval":
        (lp_pol, lp_ref, idx), temperature, top_p = eval_logps, cfg.temperature, cfg.top_p
    elif skip_kl:
        lp_pol = lp_ref = np.zeros(n * cfg.kl_n_samples)
        idx, temperature, top_p = np.repeat(np.arange(n), cfg.kl_n_samples), cfg.kl_temperature, 1.0
    else:
        samples = sample_responses(policy, tokenizer, prompt_ids, cfg.kl_n_samples, cfg.kl_temperature, 1.0,
                                   cfg.max_new_tokens, cfg.seed + 1_000_003, cfg.batch_size, cfg.backend)
        lp_pol = _policy_logps(policy, prompt_ids, samples, cfg, pad_id)
        lp_ref = score_responses(ref, *_rows(prompt_ids, samples), cfg.batch_size, pad_id=pad_id)
        idx, temperature, top_p = np.array([s.prompt_index for s in samples]), cfg.kl_temperature, 1.0
    kl = kl_estimates(lp_pol, lp_ref, idx, trim=cfg.kl_trim)
    return {**kl, "sample_temperature": temperature, "sample_top_p": top_p}


def eval_record(cfg: EvalConfig, reward, samples, wins: dict, kl: dict, lp_pol, lp_ref, timings: dict) -> dict:
    """The result dict of `evaluate_policy` (see there) from its parts."""
    rewards, lengths = wins["rewards"], np.array([s.length for s in samples])
    return {
        "win_rate": wins["win_rate"],
        "win_rate_se": wins["se"],
        "tie_rate": wins["tie_rate"],
        "reward_policy": float(rewards.mean()),
        "reward_policy_se": float(rewards.std(ddof=1) / np.sqrt(len(rewards))) if len(rewards) > 1 else 0.0,
        "reward_chosen": float(wins["chosen_rewards"].mean()),
        "kl": {k: v for k, v in kl.items() if not k.startswith(("per_prompt", "sample_"))},
        "kl_k1": kl["k1"],
        "kl_k3": kl["k3"],
        "sqrt_kl": kl[f"sqrt_{cfg.plot_kl}"],
        "sqrt_kl_estimator": cfg.plot_kl,
        "kl_source": cfg.kl_source,
        "kl_sample_temperature": kl["sample_temperature"],
        "kl_sample_top_p": kl["sample_top_p"],
        "mean_length": float(lengths.mean()),
        "finished_frac": float(np.mean([s.finished for s in samples])),
        "n_prompts": len(wins["chosen_rewards"]),
        "n_samples": len(samples),
        "settings": {**dataclasses.asdict(cfg), "key": cfg.key()},
        "reward": reward_name(reward),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "per_prompt": {"win": wins["per_prompt"].tolist(), "k1": kl["per_prompt_k1"].tolist(),
                       "k3": kl["per_prompt_k3"].tolist()},
        "samples": [
            {"prompt_idx": int(s.prompt_index), "response": s.text, "response_ids": s.response_ids,
             "reward": float(r), "logp_policy": float(a), "logp_ref": float(b), "length": s.length,
             "finished": s.finished}
            for s, r, a, b in zip(samples, rewards, lp_pol, lp_ref)
        ],
    }


EVAL_CSV_FIELDS = ["step", "examples_seen", "win_rate", "win_rate_se", "reward_policy", "reward_chosen",
                   "kl_k1", "kl_k3", "sqrt_kl", "sqrt_kl_estimator", "kl_l_median", "kl_k1_trimmed",
                   "mean_length", "finished_frac", "n_prompts", "n_samples", "kl_source",
                   "kl_sample_temperature"]


def flat_row(result: dict) -> dict:
    """One CSV/table row of an evaluation result."""
    row = {k: result.get(k) for k in EVAL_CSV_FIELDS}
    row["kl_l_median"] = result["kl"]["l_median"]
    row["kl_k1_trimmed"] = result["kl"]["k1_trimmed"]
    return row


def summary_markdown(result: dict, title: str = "Evaluation") -> str:
    s, kl = result["settings"], result["kl"]
    return (
        f"# {title}\n\n"
        f"- golden win rate vs chosen: **{result['win_rate']:.3f} +- {result['win_rate_se']:.3f}** (se over "
        f"{result['n_prompts']} prompts, {s['n_samples']} samples each at T={s['temperature']}, "
        f"top-p={s['top_p']}; ties {result['tie_rate']:.3f} counted 0.5)\n"
        f"- mean golden reward: policy {result['reward_policy']:.3f}, chosen {result['reward_chosen']:.3f}\n"
        f"- KL(pi_theta||pi_ref): k1 {kl['k1']:.4f} +- {kl['k1_se']:.4f}, k3 {kl['k3']:.4f} +- "
        f"{kl['k3_se']:.4f}, median l {kl['l_median']:.4f}, trimmed k1 {kl['k1_trimmed']:.4f} "
        f"({kl['n_samples']} samples, source `{result['kl_source']}`, T={result['kl_sample_temperature']})\n"
        f"- sqrt KL ({result['sqrt_kl_estimator']}): {result['sqrt_kl']:.4f}\n"
        f"- mean response length {result['mean_length']:.2f} tokens, finished (EOS) "
        f"{result['finished_frac']:.3f}\n"
    )


def write_eval_outputs(result: dict, out_dir: str | Path) -> None:
    """eval.json (everything but the samples), samples.jsonl, eval.csv (one row), summary.md."""
    out_dir = Path(out_dir)
    atomic_write_jsonl(out_dir / "samples.jsonl", result["samples"])
    atomic_write_csv(out_dir / "eval.csv", [flat_row(result)], EVAL_CSV_FIELDS)
    atomic_write_text(out_dir / "summary.md", summary_markdown(result))
    atomic_write_json(out_dir / "eval.json", {k: v for k, v in result.items() if k != "samples"})


def export_alpaca(samples: Sequence[dict], prompts: Sequence[str], generator: str, path: str | Path) -> list:
    """AlpacaEval model-outputs JSON: [{instruction, output, generator}], the first sample per prompt.
    `samples`: records with prompt_idx and response (as in evaluate_policy's `samples`)."""
    seen, rows = set(), []
    for s in samples:
        i = int(s["prompt_idx"])
        if i not in seen:
            seen.add(i)
            rows.append({"instruction": prompts[i], "output": s["response"], "generator": generator})
    atomic_write_text(path, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return rows


# ---------------------------------------------------------------- whole training runs

def list_checkpoints(run_dir: str | Path, include_final: bool = False) -> list[Path]:
    """A run's completely written checkpoints, sorted by step: RUN/checkpoint-N/ (TRL's layout) and, from
    runs written before it, RUN/checkpoints/step-XXXXXXXX/. With `include_final`, the final model too
    (the run's root, or a legacy RUN/final/) unless a checkpoint has its step (a run saved only at the
    end has only the final model). Each path loads with `from_pretrained`; `checkpoint_info(path)` gives
    its step, examples seen and epoch. The one way the CLI and the lab find a run's checkpoints."""
    from isdaa.train import checkpoint as ckpt

    ckpts = [p for p in ckpt.checkpoint_folders(run_dir) if ckpt.has_marker(p)]
    final = ckpt.final_model_dir(run_dir)
    if include_final and final is not None and ckpt.final_complete(run_dir):
        step = checkpoint_info(final)["step"]
        if step not in {checkpoint_info(p)["step"] for p in ckpts}:
            ckpts.append(final)
    return ckpts


def checkpoint_info(path: str | Path) -> dict:
    """{"step", "examples_seen", "epoch"} of a path `list_checkpoints` returned (any layout)."""
    from isdaa.train.checkpoint import checkpoint_info as info

    return info(path)


def checkpoint_name(run_dir: str | Path, path: str | Path) -> str:
    """The name a checkpoint's evaluation is saved under in RUN/eval/: step-XXXXXXXX (whatever the folder
    is called, so results from both layouts line up), "final" for the final model."""
    from isdaa.train.checkpoint import folder_step

    if Path(path).resolve() == Path(run_dir).resolve() or folder_step(path) is None:
        return "final"
    return f"step-{checkpoint_info(path)['step']:08d}"


def _load_causal_lm(path):
    """A checkpoint for evaluation: on the GPU when there is one."""
    import torch
    from transformers import AutoModelForCausalLM

    from isdaa.train.models import safe_from_pretrained

    model = safe_from_pretrained(AutoModelForCausalLM, str(path)).eval()
    return model.to("cuda") if torch.cuda.is_available() else model


def evaluate_run(
    run_dir: str | Path,
    ref,
    tokenizer,
    prompts: Sequence[str],
    chosen: Sequence[str],
    reward: RewardFn,
    cfg: EvalConfig | None = None,
    load_model=_load_causal_lm,
    include_reference: bool = True,
    progress=None,
    include_final: bool = False,
) -> list[dict]:
    """Evaluate every checkpoint of a training run; returns the table rows (sorted by step).

    ref: reference policy (model or path). Writes RUN/eval/step-XXXXXXXX.json per checkpoint (whatever
    the layout: `checkpoint_name`; a checkpoint whose JSON exists with the same settings key is not
    redone), RUN/eval/samples/...,
    RUN/eval/reference.json (the reference policy's own win rate, KL = 0: the R(0) of the fits),
    RUN/eval/table.csv and table.md; `include_final`: the final model too (`list_checkpoints`). The golden
    rewards of the chosen responses are computed once.
    """
    cfg = cfg or EvalConfig()
    run_dir = Path(run_dir)
    eval_dir = run_dir / "eval"
    if isinstance(ref, (str, Path)):
        ref = load_model(ref)
    n = len(prompts) if cfg.n_prompts is None else min(cfg.n_prompts, len(prompts))
    chosen_rewards = _cached_chosen_rewards(eval_dir, reward, prompts[:n], chosen[:n], cfg)

    def _eval(name, policy_fn, meta, skip_kl=False):
        return _evaluated(eval_dir, name, cfg, meta, lambda: evaluate_policy(
            policy_fn(), ref, tokenizer, prompts, chosen, reward, cfg, chosen_rewards=chosen_rewards,
            skip_kl=skip_kl))

    rows = []
    if include_reference:
        ref_res = _eval("reference", lambda: ref, {"step": None, "examples_seen": None, "name": "reference"},
                        skip_kl=True)
    for ck in list_checkpoints(run_dir, include_final):
        name = checkpoint_name(run_dir, ck)
        meta = {**checkpoint_info(ck), "checkpoint": str(ck), "name": name}
        res = _eval(name, lambda ck=ck: load_model(ck), meta)
        if progress:
            progress(res)
        row = flat_row(res)
        if include_reference:
            row["win_rate_minus_ref"] = res["win_rate"] - ref_res["win_rate"]
        rows.append(row)
    fields = EVAL_CSV_FIELDS + (["win_rate_minus_ref"] if include_reference else [])
    atomic_write_csv(eval_dir / "table.csv", rows, fields)
    atomic_write_text(eval_dir / "table.md", table_markdown(rows, ref_res if include_reference else None))
    return rows


def _evaluated(eval_dir: Path, name: str, cfg: EvalConfig, meta: dict, evaluate) -> dict:
    """RUN/eval/<name>.json when it holds these settings (`cfg.key()`), else `evaluate()` + `meta`, written
    with its samples (RUN/eval/samples/<name>.jsonl)."""
    path = eval_dir / f"{name}.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("settings", {}).get("key") == cfg.key():
            return old
    res = {**evaluate(), **meta}
    atomic_write_jsonl(eval_dir / "samples" / f"{name}.jsonl", res.pop("samples"))
    atomic_write_json(path, res)
    return res


def _cached_chosen_rewards(eval_dir: Path, reward, prompts, chosen, cfg) -> list[float]:
    digest = hashlib.sha256(json.dumps([list(prompts), list(chosen)]).encode()).hexdigest()[:16]
    path = eval_dir / "chosen_rewards.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("data_hash") == digest:
            return cached["rewards"]
    rewards = score(reward, prompts, chosen)
    atomic_write_json(path, {"data_hash": digest, "rewards": rewards})
    return rewards


def table_markdown(rows: list[dict], ref_res: dict | None = None) -> str:
    est = rows[0]["sqrt_kl_estimator"] if rows else "k1"
    lines = []
    if ref_res is not None:
        lines.append(f"reference policy: win rate {ref_res['win_rate']:.3f} +- {ref_res['win_rate_se']:.3f}\n")
    lines += [
        f"| step | examples | win rate | se | KL k1 | KL k3 | sqrt KL ({est}) | mean len |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['examples_seen']} | {r['win_rate']:.3f} | {r['win_rate_se']:.3f} | "
            f"{r['kl_k1']:.4f} | {r['kl_k3']:.4f} | {r['sqrt_kl']:.4f} | {r['mean_length']:.2f} |"
        )
    return "\n".join(lines) + "\n"
