"""The lab's pipeline: every stage cached and resumable, all through the real engine and evaluator.

    DIR/
      lab.json                 the preset (resolved) and the environment's definition
      task/init/               random-init tiny Llama + tokenizer (save_pretrained)
      data/sft.jsonl           demonstrations (prompt, completion)
      sft/                     the engine's SFT run; its final model (rundir.final_model) = pi_ref
      data/golden_train/       D_golden: label_pairs shards + pairs.jsonl (pi_ref samples at T=1, BT labels),
                               pairs_consistent.jsonl (the training data: see `consistent_pairs`)
      data/golden_eval/        the held-out split (its chosen responses are the win-rate opponents)
      runs/<run_id>/           one preference run: the engine's run dir + eval/ (evaluate_run) +
                               ratios.jsonl (importance ratios on the training pairs) + lab_done.json
      report.md, figures/, csv/   (isdaa.lab.report)

A stage is done when its marker exists (`DIR/stages/<stage>.json`, or `lab_done.json` for a run); a
marker records the hash of the settings it depends on, and a mismatch is an error (never mix two
presets' results in one folder). An interrupted run (no `lab_done.json`) is started again from scratch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from isdaa.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from isdaa.lab import rundir
from isdaa.lab.presets import ENGINE_EXTRAS, Preset, RunSpec, thaw
from isdaa.lab.task import task_ref

# ---------------------------------------------------------------------------------------------------
# Paths and markers


@dataclasses.dataclass(frozen=True)
class LabDir:
    root: Path

    @property
    def init_model(self) -> Path:
        return self.root / "task" / "init"

    @property
    def sft_data(self) -> Path:
        return self.root / "data" / "sft.jsonl"

    @property
    def sft_run(self) -> Path:
        return self.root / "sft"

    @property
    def ref_model(self) -> Path:
        """pi_ref: the SFT run's final model, wherever the engine's layout keeps it (`rundir.final_model`);
        before the SFT stage ran, where this engine will write it."""
        try:
            return rundir.final_model(self.sft_run)
        except FileNotFoundError:
            return self.sft_run  # TRL's layout: the final model at the run's output root

    @property
    def golden_train(self) -> Path:
        return self.root / "data" / "golden_train"

    @property
    def golden_eval(self) -> Path:
        return self.root / "data" / "golden_eval"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def run(self, spec: RunSpec) -> Path:
        return self.root / "runs" / spec.run_id

    def marker(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"


def settings_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _done(marker: Path, key: str) -> dict | None:
    """The marker's record if the stage is done with these settings; an error if done with others."""
    if not marker.exists():
        return None
    rec = json.loads(marker.read_text())
    if rec.get("key") != key:
        raise RuntimeError(
            f"{marker} was made with other settings (key {rec.get('key')} != {key}): this folder holds "
            f"another preset's results; use a new --out folder"
        )
    return rec


def _mark(marker: Path, key: str, **info) -> dict:
    rec = {"key": key, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), **info}
    atomic_write_json(marker, rec)
    return rec


# Settings each stage depends on (a change invalidates it and everything after).
def _key_task(p: Preset) -> str:
    return settings_hash({"seed": p.task_seed, "n_sft": p.n_sft, "def": p.task.definition()})


def _key_sft(p: Preset) -> str:
    return settings_hash([_key_task(p), p.sft_epochs, p.sft_batch, p.sft_lr])


def _key_label(p: Preset) -> str:
    return settings_hash([_key_sft(p), p.n_pairs, p.n_eval_prompts])


def _key_run(p: Preset, spec: RunSpec) -> str:
    """What a run's results depend on; not its report `group`, so presets share identical runs (the
    paper grid's DPO at beta 0.1 is also a point of the regimes comparison)."""
    train = {k: v for k, v in spec.to_dict().items() if k not in ("group", "label")}
    return settings_hash([_key_label(p), train, p.epochs, p.batch, p.scheduler, p.warmup_ratio,
                          list(p.save_fractions), dataclasses.asdict(p.evaluation), ENGINE_EXTRAS])


def _run_done(marker: Path, key: str) -> dict | None:
    """A run's record if finished with these settings; None if absent, unfinished or made with other
    settings (then it is redone: a run is self-contained, nothing downstream is invalidated)."""
    if not marker.exists():
        return None
    rec = json.loads(marker.read_text())
    return rec if rec.get("key") == key else None


# ---------------------------------------------------------------------------------------------------
# Stage 0: the environment (data + initial model)

# Disjoint prompt streams: seeds derived from the task seed.
def _seeds(p: Preset) -> dict:
    s = 1000 * p.task_seed
    return {"sft": s + 1, "model": s + 2, "pref_prompts": s + 3, "eval_prompts": s + 4, "label": s + 5}


def stage_task(lab: LabDir, p: Preset) -> dict:
    key = _key_task(p)
    if rec := _done(lab.marker("task"), key):
        return rec
    seeds = _seeds(p)
    rows = p.task.make_sft_rows(p.n_sft, seeds["sft"])
    atomic_write_jsonl(lab.sft_data, rows)
    p.task.save_initial_model(lab.init_model, seed=seeds["model"])
    atomic_write_json(lab.root / "task" / "definition.json", p.task.definition())
    return _mark(lab.marker("task"), key, n_sft=len(rows))


# ---------------------------------------------------------------------------------------------------
# Stage 1: SFT of pi_ref through the engine


def sft_config(lab: LabDir, p: Preset):
    from isdaa.config import SFTConfig, load_config

    cfg = load_config({
        "model": {"name_or_path": str(lab.init_model)},
        "data": {"train": str(lab.sft_data), "max_length": p.task.max_length,
                 "max_prompt_length": p.task.max_prompt_length},
        "optim": {"lr": p.sft_lr, "scheduler": "cosine", "warmup_ratio": 0.03, "weight_decay": 0.0},
        "output_dir": str(lab.sft_run), "seed": p.task_seed, "epochs": p.sft_epochs,
        "batch_size": p.sft_batch, "micro_batch_size": p.sft_batch, "mixed_precision": "no",
        "logging_steps": 20, "progress": False, "save_resume_state": False,
        "num_threads": 1,  # 2 threads ran 10x SLOWER than 1 on the shared 2-core machine (spin-waits)
    }, kind="sft")
    assert isinstance(cfg, SFTConfig)
    return cfg


def stage_sft(lab: LabDir, p: Preset, progress=None) -> dict:
    from isdaa.api import train

    key = _key_sft(p)
    if rec := _done(lab.marker("sft"), key):
        return rec
    if lab.sft_run.exists():
        shutil.rmtree(lab.sft_run)  # an interrupted SFT: start over (about a minute)
    t0 = time.perf_counter()
    callbacks = (_ProgressCallback(progress),) if progress else ()
    summary = train(sft_config(lab, p), callbacks=callbacks)
    return _mark(lab.marker("sft"), key, seconds=round(time.perf_counter() - t0, 1), summary=_jsonable(summary))


def _ProgressCallback(fn):
    """A TrainerCallback forwarding (step, total_steps) to a progress function (the CLI's bar)."""
    from isdaa.train.callbacks import TrainerCallback

    class _Progress(TrainerCallback):
        def on_step_end(self, ctx):
            fn(ctx.step, ctx.total_steps)

    return _Progress()


# ---------------------------------------------------------------------------------------------------
# Stage 2: D_golden (pi_ref samples at T=1, BT labels on r*, pi_ref log-probs as behavior columns)


def load_ref(lab: LabDir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isdaa.train.models import safe_from_pretrained

    model = safe_from_pretrained(AutoModelForCausalLM, str(lab.ref_model)).eval()
    return model, AutoTokenizer.from_pretrained(str(lab.ref_model))


def stage_label(lab: LabDir, p: Preset, progress=None) -> dict:
    from isdaa.evaluate.label import label_pairs

    key = _key_label(p)
    if rec := _done(lab.marker("label"), key):
        return rec
    seeds = _seeds(p)
    model, tok = load_ref(lab)
    t0 = time.perf_counter()
    stats = {}
    for name, n, pseed, folder in (
        ("train", p.n_pairs, seeds["pref_prompts"], lab.golden_train),
        ("eval", p.n_eval_prompts, seeds["eval_prompts"], lab.golden_eval),
    ):
        if folder.exists():
            shutil.rmtree(folder)  # label_pairs resumes shards, but a changed preset must not reuse them
        rows = label_pairs(model, tok, p.task.make_prompts(n, pseed), p.task.golden_reward, n=2, temperature=1.0,
                           labeling="bt", seed=seeds["label"] + (0 if name == "train" else 10_000),
                           max_new_tokens=p.task.max_response_tokens, out_dir=folder,
                           progress=(lambda k, t: progress(k, t)) if progress else None)
        if name == "train":
            rows, dropped = consistent_pairs(model, tok, rows, p.task)
            atomic_write_jsonl(folder / TRAIN_PAIRS, rows)
            stats["dropped_pairs"] = dropped
        stats[name] = _pair_stats(rows)
        if task_stats := p.task.pair_statistics(rows):  # the task's own (e.g. the length task's design checks)
            stats[name]["task"] = task_stats
    return _mark(lab.marker("label"), key, seconds=round(time.perf_counter() - t0, 1), **stats)


TRAIN_PAIRS = "pairs_consistent.jsonl"


def consistent_pairs(ref, tokenizer, rows: list[dict], task, tol: float = 1e-3) -> tuple[list[dict], dict]:
    """The training pairs of D_golden the engine can take exactly as sampled; returns (rows, dropped counts).

    - A response that is only EOS decodes to "" and the engine refuses blank responses (data/rows.py), so
      pairs with an empty response are dropped (`empty_response`).
    - label_pairs stores pi_ref's log-probs of the exact sampled ids; a response whose text does not
      re-tokenize to those ids (a tokenizer that merges or splits differently) would show the trainer
      another sequence than the behavior log-probs describe (an IS ratio far from 1 at pi_theta =
      pi_ref). Detected by recomputing pi_ref's log-probs through the engine's tokenization; dropped
      (`not_reproducible`).
    - Pairs of two identical responses carry no preference (zero DPO/IPO gradient) and the engine drops
      them from a training set anyway (with a warning); dropped here so that the file is exactly what
      is trained on (`identical`).
    - A response cut at the generation limit (flagged `*_finished: false` by label_pairs) has no EOS; the
      engine drops such pairs by default (data.drop_unfinished), so they are dropped here (`unfinished`).
    All counts are reported in the label stage's record and the report.
    """
    nonblank = [r for r in rows if r["chosen"].strip() and r["rejected"].strip()]
    distinct = [r for r in nonblank if r["chosen"] != r["rejected"]]
    finished = [r for r in distinct if r.get("chosen_finished", True) and r.get("rejected_finished", True)]
    gaps = behavior_gaps(ref, tokenizer, finished, task) if finished else []
    keep = [r for r, d in zip(finished, gaps) if d <= tol]
    return keep, {"empty_response": len(rows) - len(nonblank), "identical": len(nonblank) - len(distinct),
                  "unfinished": len(distinct) - len(finished), "not_reproducible": len(finished) - len(keep)}


def _pair_stats(rows: list[dict]) -> dict:
    n = max(len(rows), 1)
    return {
        "n_pairs": len(rows),
        "chosen_reward": sum(r["chosen_reward"] for r in rows) / n,
        "rejected_reward": sum(r["rejected_reward"] for r in rows) / n,
        "chosen_better_frac": sum(r["chosen_reward"] > r["rejected_reward"] for r in rows) / n,
        "tie_frac": sum(r["chosen_reward"] == r["rejected_reward"] for r in rows) / n,
    }


def golden_pairs(lab: LabDir, split: str) -> list[dict]:
    return read_jsonl(lab.golden_train / TRAIN_PAIRS if split == "train" else lab.golden_eval / "pairs.jsonl")


# ---------------------------------------------------------------------------------------------------
# Stage 3-5: one preference run (offline DAA or online DPO) + evaluation of every checkpoint


def pref_config(lab: LabDir, p: Preset, spec: RunSpec):
    from isdaa.config import load_config
    from isdaa.train.models import compile_unavailable

    method = "dpo" if spec.online else spec.method
    scheduler = spec.scheduler or p.scheduler
    warmup = p.warmup_ratio if spec.warmup_ratio is None else spec.warmup_ratio
    # Offline runs: eager attention and compiled layers, the fastest step for this tiny model (benchmarks/
    # README.md); where nothing can be compiled, the same computation uncompiled. Online runs sample every
    # step (sdpa samples faster) and would pay a compilation per worker for a small part of their step.
    fast = not spec.online and p.compile and compile_unavailable() is None
    cfg = {
        "model": {"name_or_path": str(lab.ref_model), **({"attn_implementation": "eager"} if fast else {})},
        "compile": fast,
        "data": {"train": str(lab.golden_train / TRAIN_PAIRS), "max_length": p.task.max_length,
                 "max_prompt_length": p.task.max_prompt_length, "max_train_examples": spec.n_pairs},
        "optim": {"lr": spec.lr, "scheduler": scheduler, "warmup_ratio": warmup, "weight_decay": 0.0,
                  "max_grad_norm": 1.0},
        "output_dir": str(lab.run(spec)), "seed": spec.seed, "epochs": p.epochs,
        "batch_size": p.batch, "micro_batch_size": p.batch, "mixed_precision": "no",
        "logging_steps": 1, "progress": False, "num_threads": 1,
        "save_fractions": list(p.save_fractions), "save_initial": False, "save_resume_state": False,
        "method": method, "beta": spec.beta, "loss": dict(spec.options),
        "ref_cache_dir": str(lab.cache / "ref_logps"), "run_name": spec.run_id, **ENGINE_EXTRAS,
        **thaw(spec.config),  # the arm's engine settings (e.g. a reference-sync block)
    }
    if spec.online:  # the offline runs' steps and pairs per step; the pairs come from the policy
        cfg["max_steps"] = offline_steps(lab, p, spec)
        cfg["ref_logps"] = "on_the_fly"
    if spec.optimizer != "adamw":
        from isdaa.config import OptimConfig

        if "optimizer" not in {f.name for f in dataclasses.fields(OptimConfig)}:
            raise NotImplementedError(
                f"run {spec.run_id} needs optimizer {spec.optimizer!r}, but the engine's OptimConfig has no "
                "`optimizer` field (adamw | sgd) yet")
        cfg["optim"]["optimizer"] = spec.optimizer
    return load_config(cfg, kind="pref")


def offline_steps(lab: LabDir, p: Preset, spec: RunSpec) -> int:
    """The optimizer steps of an offline run of `spec` (the engine drops the last partial batch)."""
    from isdaa.config import total_steps

    n = len(golden_pairs(lab, "train")[: spec.n_pairs])  # pairs_consistent.jsonl holds no identical pairs
    return total_steps(n, p.batch, p.epochs)


def eval_config(p: Preset, seed: int = 0):
    from isdaa.evaluate.evaluator import EvalConfig

    e = p.evaluation
    return EvalConfig(n_prompts=e.n_prompts, n_samples=e.n_samples, temperature=e.temperature, top_p=e.top_p,
                      max_new_tokens=p.task.max_response_tokens, seed=seed, batch_size=512,
                      kl_source="separate", kl_n_samples=e.n_kl_samples, plot_kl="k1")


def run_one(root: str, preset: Preset, spec: RunSpec) -> dict:
    """Train one run and evaluate all its checkpoints; idempotent (a finished run returns its record).
    Runs in a worker process: one thread, everything from files."""
    import torch

    torch.set_num_threads(1)
    lab = LabDir(Path(root))
    key = _key_run(preset, spec)
    done = lab.run(spec) / rundir.DONE
    if rec := _run_done(done, key):
        return rec
    run_dir = lab.run(spec)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # interrupted: redo from scratch (runs are short)
    t0 = time.perf_counter()
    cfg = pref_config(lab, preset, spec)
    if spec.online:
        from isdaa.api import train
        from isdaa.lab.online import OnlineDPOSource

        _, tok = load_ref(lab)
        source = OnlineDPOSource(tokenizer=tok, prompts=preset.task.make_prompts(
            preset.n_pairs, _seeds(preset)["pref_prompts"]), reward=preset.task.golden_reward,
            max_new_tokens=preset.task.max_response_tokens, prompts_per_step=preset.batch, seed=spec.seed)
        summary = train(cfg, batch_source=source)
        atomic_write_jsonl(run_dir / "online_labels.jsonl", source.stats)  # per step: pairs, sample reward
    else:
        from isdaa.api import train

        summary = train(cfg)
    t_train = time.perf_counter() - t0
    evaluate_checkpoints(lab, preset, spec)
    atomic_write_json(run_dir / "lab_spec.json", spec.to_dict())
    return _mark(done, key, run=spec.to_dict(), train_seconds=round(t_train, 1),
                 seconds=round(time.perf_counter() - t0, 1), summary=_jsonable(summary))


def evaluate_checkpoints(lab: LabDir, p: Preset, spec: RunSpec) -> None:
    """evaluate_run (win rate, KL, lengths per checkpoint) + importance ratios on the training pairs."""
    from transformers import AutoModelForCausalLM

    from isdaa.evaluate.evaluator import evaluate_run
    from isdaa.train.models import safe_from_pretrained

    ref, tok = load_ref(lab)
    ev = golden_pairs(lab, "eval")
    evaluate_run(lab.run(spec), ref, tok, [r["prompt"] for r in ev], [r["chosen"] for r in ev],
                 p.task.golden_reward, eval_config(p, seed=spec.seed))
    pairs = golden_pairs(lab, "train")[: p.evaluation.n_ratio_pairs]
    options = dict(spec.options)  # the run's IS options (clip, normalizations); the registry fills defaults
    rows = [{"step": 0, **importance_stats(ref, tok, pairs, p.task, options)}]  # pi_theta = pi_ref: ratio ~ 1
    for step, ck in rundir.checkpoints(lab.run(spec)):
        policy = safe_from_pretrained(AutoModelForCausalLM, str(ck)).eval()
        rows.append({"step": step, **importance_stats(policy, tok, pairs, p.task, options)})
    atomic_write_jsonl(lab.run(spec) / "ratios.jsonl", rows)


def pair_logps(policy, tokenizer, pairs: list[dict], task, batch_pairs: int = 256):
    """pi_theta's summed log-probs of each pair's chosen and rejected response through the engine's own
    tokenization (`tokenize_pref`, truncation included), collation and `causal_lm_logps`, so that at
    pi_theta = pi_b they equal the behavior columns up to float error. Returns (P,) float64 tensors
    (chosen, rejected) and (P,) lengths (chosen, rejected)."""
    import torch

    from isdaa.data import collate_pref, tokenize_pref
    from isdaa.logprobs import causal_lm_logps

    # one example per pair, identical pairs included (the engine drops those from a training set)
    examples = tokenize_pref(pairs, tokenizer, task.max_length, task.max_prompt_length, drop_identical=False)
    lp_c, lp_r, len_c, len_r = [], [], [], []
    was_training = policy.training
    policy.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_pairs):
            batch = collate_pref(examples[i: i + batch_pairs], tokenizer.pad_token_id)
            logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logps = causal_lm_logps(logits, batch["input_ids"], batch["response_mask"]).double()  # (2B,)
            n = batch["n_pairs"]
            lp_c.append(logps[:n])
            lp_r.append(logps[n:])
            len_c.append(batch["chosen_lengths"])
            len_r.append(batch["rejected_lengths"])
    policy.train(was_training)
    return torch.cat(lp_c), torch.cat(lp_r), torch.cat(len_c), torch.cat(len_r)


def _behavior_logps(pairs: list[dict]):
    import torch

    return (torch.tensor([r["chosen_logps"] for r in pairs], dtype=torch.float64),
            torch.tensor([r["rejected_logps"] for r in pairs], dtype=torch.float64))


def importance_stats(policy, tokenizer, pairs: list[dict], task, options: dict | None = None) -> dict:
    """Figure 6's quantities on training pairs under the run's IS options (`loss` config; defaults
    filled in by the registry): the joint ratio pi_theta(y_c) pi_theta(y_r) / pi_b(y_c) pi_b(y_r) with
    pi_b's log-probs from the data (behavior columns), through `isdaa.importance` -- the same code as
    the trainer's `is/*` metrics (weight_mean, weight_max, clip_frac, ess, top_share, log_ratio_mean,
    ratio_mean_log = log of the unclipped mean ratio)."""
    from isdaa import importance
    from isdaa.losses import validate_options

    lp_c, lp_r, len_c, len_r = pair_logps(policy, tokenizer, pairs, task)
    beh_c, beh_r = _behavior_logps(pairs)
    return importance.importance_stats(lp_c, lp_r, beh_c, beh_r, validate_options(options or {}),
                                       chosen_lengths=len_c, rejected_lengths=len_r)


def behavior_gaps(policy, tokenizer, pairs: list[dict], task) -> list[float]:
    """Per pair, |log pi(y_c) - behavior column| + |log pi(y_r) - behavior column|: 0 when the stored
    behavior log-probs describe exactly the sequences the engine trains on."""
    lp_c, lp_r, _, _ = pair_logps(policy, tokenizer, pairs, task)
    beh_c, beh_r = _behavior_logps(pairs)
    return ((lp_c - beh_c).abs() + (lp_r - beh_r).abs()).tolist()


def _jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return json.loads(json.dumps(obj, default=str))


# ---------------------------------------------------------------------------------------------------
# The sweep: worker processes, finished runs skipped


def default_jobs() -> int:
    """LAB-NOTES: 2 processes x 1 thread beat 1 x 2 on a 2-core machine."""
    return max(1, min(os.cpu_count() or 1, 8))


def _run_guarded(root: str, preset: Preset, spec: RunSpec) -> dict:
    """run_one, with a failure recorded (runs/<id>/lab_error.txt) instead of ending the sweep."""
    import traceback

    try:
        return run_one(root, preset, spec)
    except Exception as err:  # one failed run must not lose the others; it is reported at the end
        path = LabDir(Path(root)).run(spec) / "lab_error.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(traceback.format_exc())
        return {"error": f"{type(err).__name__}: {err}", "run": spec.to_dict(), "traceback": str(path)}


def stage_sweep(lab: LabDir, p: Preset, jobs: int = 1, progress=None) -> list[dict]:
    """Every run of the preset not finished yet, `jobs` at a time (spawned workers, one thread each).
    Returns one record per run; failed runs carry an "error" (and are retried by the next invocation)."""
    todo, records = [], []
    for spec in p.runs:
        if rec := _run_done(lab.run(spec) / rundir.DONE, _key_run(p, spec)):
            records.append(rec)
        else:
            todo.append(spec)
    # seed by seed (an interrupted sweep leaves whole seeds), the main grid first, and within that the
    # longest runs first (online DPO samples every step): the pool's tail stays short
    todo.sort(key=lambda s: (s.seed, s.group != "main", -(2 if s.online else 1) * (s.n_pairs or p.n_pairs)))
    if progress:
        progress(len(records), len(p.runs), None)
    if jobs <= 1 or len(todo) <= 1:
        for spec in todo:
            records.append(_run_guarded(str(lab.root), p, spec))
            if progress:
                progress(len(records), len(p.runs), spec)
        return records
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    env_threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # inherited by the spawned workers
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=mp.get_context("spawn")) as ex:
            futures = {ex.submit(_run_guarded, str(lab.root), p, spec): spec for spec in todo}
            for fut in as_completed(futures):
                records.append(fut.result())
                if progress:
                    progress(len(records), len(p.runs), futures[fut])
    finally:
        for k, v in env_threads.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return records


# ---------------------------------------------------------------------------------------------------
# Everything


STAGES = ("task", "sft", "label", "sweep", "report")


def write_lab_json(lab: LabDir, p: Preset) -> None:
    atomic_write_json(lab.root / "lab.json", {"preset": p.to_dict(), "environment": p.task.definition(),
                                              "task": task_ref(p.task)})


def run_lab(out: str | Path, preset: Preset, jobs: int | None = None, reporter=None,
            stages: tuple[str, ...] = STAGES, compare=()) -> dict:
    """The stages in order (cached ones are skipped); `stages` picks which to run: a stage missing from
    it is skipped, e.g. ("report",) rewrites the report from the finished runs, ("task", "sft") stops
    after SFT. `reporter(stage, done, total, info)` gets progress; done = -1 marks a stage's end.
    `compare`: other lab folders whose Table 1 the report sets beside this one's."""
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGES)}")
    lab = LabDir(Path(out))
    lab.root.mkdir(parents=True, exist_ok=True)
    rep = reporter or (lambda *a: None)
    t0 = time.perf_counter()
    result: dict = {"report": None, "summary_lines": [], "failed": []}
    if "report" not in stages or len(stages) > 1:
        write_lab_json(lab, preset)
    if "task" in stages:
        rep("task", 0, 1, None)
        stage_task(lab, preset)
        rep("task", -1, -1, None)
    if "sft" in stages:
        stage_sft(lab, preset, progress=lambda s, t: rep("sft", s, t, None))
        rep("sft", -1, -1, None)
    if "label" in stages:
        stage_label(lab, preset, progress=lambda s, t: rep("label", s, t, None))
        rep("label", -1, -1, None)
    if "sweep" in stages:
        records = stage_sweep(lab, preset, jobs or default_jobs(),
                              progress=lambda d, t, spec: rep("sweep", d, t, spec))
        result["failed"] = [r for r in records if "error" in r]
    if "report" in stages:
        from isdaa.lab.report import write_report

        if not (lab.root / "lab.json").exists():
            raise FileNotFoundError(f"{lab.root} holds no lab results (lab.json)")
        rep("report", 0, 1, None)
        result.update(write_report(lab.root, preset, compare))
        rep("report", -1, -1, None)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result
