"""Evaluation during training: every `every` steps, sample M prompts from the current pi_theta,
estimate KL(pi_theta || pi_ref) (k1, k3; samples at temperature 1, unbiased) and, when a golden reward
and chosen responses are given, the golden win rate (samples at the protocol's temperature / top-p);
log them with the step's training metrics (`ctx.log`), and optionally stop the run once sqrt(KL)
exceeds a budget (`ctx.request_stop`).

Logged keys: eval/kl_k1, eval/kl_k3, eval/sqrt_kl (estimator `kl_estimator`), eval/kl_l_median,
eval/win_rate, eval/win_rate_se, eval/reward, eval/mean_length, eval/seconds.

From a training config's `eval` block (`LiveEvalCallback.from_config`, added by `isdaa.api.train`): the
reward is imported and checked when the callback is built (before any model loads; a `module:function`
is found in the working directory, as `python -m` would find it), and the reference model, prompts,
chosen responses and reward model are loaded before step 1 (`on_train_begin`); a few
generations per evaluation go to RUN/eval_generations.jsonl and, as a table, to the trackers that take
tables (wandb, clearml).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from isdaa.evaluate.metrics import kl_estimates, win_rate
from isdaa.evaluate.rewards import RewardFn, score
from isdaa.evaluate.sampling import collective_forwards, encode_prompts, sample_logps, sample_responses
from isdaa.logprobs import score_responses
from isdaa.train.accel_compat import native_forward
from isdaa.train.callbacks import TrainerCallback
from isdaa.train.models import loading_unprepared


class LiveEvalCallback(TrainerCallback):
    """ref: the reference policy (in memory, same tokenizer as the trained model); prompts: evaluation
    prompts (the first `n_prompts` are used at every evaluation, so points are comparable);
    chosen/reward: optional, for the win rate; kl_budget: stop when sqrt(KL) > kl_budget.
    Runs on the main process only, unless the policy is sharded (FSDP2, ZeRO-3: its forwards are
    collective): then every process runs the same evaluation in lockstep (same prompts and seeds, so
    the same number of forwards; generation with `synced_gpus`), each holding the reference (and reward)
    model, and the main process logs. The model's training mode is restored afterwards."""

    def __init__(self, ref, prompts: Sequence[str], every: int = 50, n_prompts: int = 64,
                 reward: RewardFn | None = None, chosen: Sequence[str] | None = None,
                 kl_budget: float | None = None, kl_estimator: str = "k1", kl_samples_per_prompt: int = 1,
                 temperature: float = 0.7, top_p: float = 0.95, n_samples: int = 2, max_new_tokens: int = 128,
                 batch_size: int = 256, seed: int = 0, at_start: bool = False, log_generations: int = 0,
                 progress: bool = False):
        if kl_estimator not in ("k1", "k3"):
            raise ValueError("kl_estimator must be 'k1' or 'k3'")
        if reward is not None and chosen is None:
            raise ValueError("the live win rate needs the chosen responses")
        self.ref, self.every, self.kl_budget, self.kl_estimator = ref, every, kl_budget, kl_estimator
        self.prompts = list(prompts[:n_prompts])
        self.chosen = None if chosen is None else list(chosen[:n_prompts])
        self.reward = reward
        self.kl_samples_per_prompt, self.n_samples = kl_samples_per_prompt, n_samples
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.batch_size, self.seed, self.at_start = batch_size, seed, at_start
        self._chosen_rewards = None
        self.log_generations, self.progress = log_generations, progress
        self.generations: list[dict] = []  # the latest evaluation's first `log_generations` samples
        self.history: list[dict] = []

    @classmethod
    def from_config(cls, cfg) -> LiveEvalCallback:
        """The callback a training config's `eval` block (config.LiveEvalConfig) describes."""
        from isdaa.evaluate.rewards import check_reward

        e = cfg.eval
        reward = None if e.reward is None else check_reward(e.reward, "eval.reward")  # before anything loads
        return _ConfiguredLiveEval(cfg, reward_spec=reward, ref=None, prompts=[], every=e.every, n_prompts=e.n_prompts,
                                   kl_budget=e.kl_budget, kl_estimator=e.kl_estimator,
                                   kl_samples_per_prompt=e.kl_samples, temperature=e.temperature, top_p=e.top_p,
                                   n_samples=e.n, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
                                   seed=cfg.seed, at_start=e.at_start, log_generations=e.log_generations,
                                   progress=False)  # inside training: one bar at a time, its metrics in the log line

    def prepare(self, ctx) -> None:
        """Called before each evaluation (subclasses load what they need)."""

    def on_step_end(self, ctx) -> None:
        main = getattr(ctx, "is_main_process", True)
        if not (main or collective_forwards(ctx.model)):
            return
        due = ctx.step % self.every == 0 or ctx.step == ctx.total_steps or (self.at_start and ctx.step == 1)
        if not due:
            return
        with loading_unprepared():  # the reference / reward model: full weights on every process
            self.prepare(ctx)
        out = self.evaluate(ctx.model, ctx.tokenizer, seed=self.seed + ctx.step)
        if not main:  # a sharded policy's lockstep partner: the main process logs and decides
            return
        ctx.log(out)
        self.history.append({"step": ctx.step, **out})
        if self.generations:
            self._log_generations(ctx)
        if self.kl_budget is not None and out["eval/sqrt_kl"] > self.kl_budget:
            ctx.request_stop(f"kl_budget: sqrt KL ({self.kl_estimator}) {out['eval/sqrt_kl']:.4f} > "
                             f"{self.kl_budget} at step {ctx.step}")

    def evaluate(self, model, tokenizer, seed: int) -> dict:
        t0 = time.perf_counter()
        pids = encode_prompts(tokenizer, self.prompts)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        kl_s = sample_responses(model, tokenizer, pids, self.kl_samples_per_prompt, 1.0, 1.0,
                                self.max_new_tokens, seed, self.batch_size, progress=self.progress)
        p_ids, r_ids = [pids[s.prompt_index] for s in kl_s], [s.response_ids for s in kl_s]
        # the policy scored like its reference: a forward in the weights' own precision, outside the autocast
        # wrapper mixed precision puts on the training model (bf16 against fp32 read as a KL floor of ~3e-4 on
        # an unchanged tiny policy); without that wrapper the log-probs recorded during sampling serve
        with native_forward(model) as plain:
            mode = "forward" if plain.__dict__.get("_original_forward") is not None else "auto"
            lp_pol = sample_logps(plain, pids, kl_s, self.batch_size, pad, mode=mode)
        lp_ref = score_responses(self.ref, p_ids, r_ids, self.batch_size, pad_id=pad)
        kl = kl_estimates(lp_pol, lp_ref, [s.prompt_index for s in kl_s])
        shown, rewards = kl_s, None
        out = {"eval/kl_k1": kl["k1"], "eval/kl_k3": kl["k3"], "eval/sqrt_kl": kl[f"sqrt_{self.kl_estimator}"],
               "eval/kl_l_median": kl["l_median"]}
        if self.reward is not None:
            if self._chosen_rewards is None:
                self._chosen_rewards = score(self.reward, self.prompts, self.chosen)
            wr_s = sample_responses(model, tokenizer, pids, self.n_samples, self.temperature, self.top_p,
                                    self.max_new_tokens, seed + 1_000_003, self.batch_size, progress=self.progress)
            rewards = score(self.reward, [self.prompts[s.prompt_index] for s in wr_s], [s.text for s in wr_s])
            wr = win_rate(rewards, self._chosen_rewards, [s.prompt_index for s in wr_s])
            shown = wr_s
            out.update({"eval/win_rate": wr["win_rate"], "eval/win_rate_se": wr["se"],
                        "eval/reward": float(np.mean(rewards)),
                        "eval/mean_length": float(np.mean([s.length for s in wr_s]))})
        self.generations = [{"prompt": self.prompts[s.prompt_index], "response": s.text,
                             "reward": None if rewards is None else rewards[i], "finished": s.finished}
                            for i, s in enumerate(shown[: self.log_generations])]
        out["eval/seconds"] = time.perf_counter() - t0
        return out

    def _log_generations(self, ctx) -> None:
        """The latest generations: appended to RUN/eval_generations.jsonl, and a table for the trackers."""
        from isdaa.io import append_jsonl

        rows = [{"step": ctx.step, **g} for g in self.generations]
        if ctx.output_dir:
            for row in rows:
                append_jsonl(Path(ctx.output_dir) / "eval_generations.jsonl", row)
        columns = ["step", "prompt", "response", "reward", "finished"]
        for tracker in getattr(ctx.accelerator, "trackers", None) or []:
            if callable(getattr(tracker, "log_table", None)):
                tracker.log_table("eval/generations", columns=columns, data=[[r[c] for c in columns] for r in rows],
                                  step=ctx.step)


class _ConfiguredLiveEval(LiveEvalCallback):
    """Loads the reference model (`ref_model` or the initial policy, frozen), the prompts (`eval.prompts`,
    else data.eval; the training data only when named, with a warning) with their chosen responses, and
    the reward, before step 1."""

    def __init__(self, cfg, reward_spec=None, **kwargs):
        super().__init__(**kwargs)
        self.cfg, self.reward_spec = cfg, reward_spec

    def on_train_begin(self, ctx) -> None:
        """Everything the first evaluation needs, loaded before step 1: a bad prompts file, reward or
        reference fails before any training."""
        if getattr(ctx, "is_main_process", True):
            self.prepare(ctx)

    def prepare(self, ctx) -> None:
        if self.ref is not None:
            return
        from isdaa.data import load_rows
        from isdaa.evaluate.rewards import load_reward
        from isdaa.train.models import load_causal_lm

        cfg, e = self.cfg, self.cfg.eval
        spec = e.prompts or cfg.data.eval  # config validation: one of them is set
        split = e.split if e.prompts else cfg.data.eval_split
        if spec == cfg.data.train and split == cfg.data.train_split:
            import warnings

            warnings.warn(f"eval: the live eval's prompts are the training data's ({spec}, split {split}): win rate "
                          "and KL are measured on prompts the policy trains on", stacklevel=2)
        rows = load_rows(spec, split, None if e.prompts else cfg.data.subset, e.n_prompts)
        self.prompts, chosen = prompts_and_chosen(rows, ctx.tokenizer)
        if e.reward is not None:
            if any(c is None for c in chosen):
                raise ValueError(f"eval.reward needs a `chosen` response for every prompt of {spec}")
            self.reward, self.chosen = load_reward(self.reward_spec or e.reward), chosen
        device = next(ctx.model.parameters()).device
        self.ref = load_causal_lm(cfg.model, ctx.tokenizer, cfg.ref_model, trainable=False).to(device)


def prompts_and_chosen(rows, tokenizer) -> tuple[list[str], list[str | None]]:
    """Prompt texts (chat-rendered for conversational rows) and chosen responses (None when a row has
    none) of preference or prompt-only rows: `isdaa.data.prompts_and_chosen`, the one row parser."""
    from isdaa.data import prompts_and_chosen as parse

    return parse(rows, tokenizer, need_chosen=False)
