"""Evaluation during training: every `every` steps, sample M prompts from the current pi_theta,
estimate KL(pi_theta || pi_ref) (k1, k3; samples at temperature 1, unbiased) and, when a golden reward
and chosen responses are given, the golden win rate (samples at the protocol's temperature / top-p);
log them with the step's training metrics (`ctx.log`), and optionally stop the run once sqrt(KL)
exceeds a budget (`ctx.request_stop`).

Logged keys: eval/kl_k1, eval/kl_k3, eval/sqrt_kl (estimator `kl_estimator`), eval/kl_l_median,
eval/win_rate, eval/win_rate_se, eval/reward, eval/mean_length, eval/seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from isdaa.evaluate.metrics import kl_estimates, win_rate
from isdaa.evaluate.rewards import RewardFn, score
from isdaa.evaluate.sampling import encode_prompts, sample_logps, sample_responses
from isdaa.logprobs import score_responses
from isdaa.train.callbacks import TrainerCallback


class LiveEvalCallback(TrainerCallback):
    """ref: the reference policy (in memory, same tokenizer as the trained model); prompts: evaluation
    prompts (the first `n_prompts` are used at every evaluation, so points are comparable);
    chosen/reward: optional, for the win rate; kl_budget: stop when sqrt(KL) > kl_budget.
    Runs on the main process only; the model's training mode is restored afterwards."""

    def __init__(self, ref, prompts: Sequence[str], every: int = 50, n_prompts: int = 64,
                 reward: RewardFn | None = None, chosen: Sequence[str] | None = None,
                 kl_budget: float | None = None, kl_estimator: str = "k1", kl_samples_per_prompt: int = 1,
                 temperature: float = 0.7, top_p: float = 0.95, n_samples: int = 2, max_new_tokens: int = 128,
                 batch_size: int = 256, seed: int = 0, at_start: bool = False):
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
        self.history: list[dict] = []

    def on_step_end(self, ctx) -> None:
        if not getattr(ctx, "is_main_process", True):
            return
        due = ctx.step % self.every == 0 or ctx.step == ctx.total_steps or (self.at_start and ctx.step == 1)
        if not due:
            return
        out = self.evaluate(ctx.model, ctx.tokenizer, seed=self.seed + ctx.step)
        ctx.log(out)
        self.history.append({"step": ctx.step, **out})
        if self.kl_budget is not None and out["eval/sqrt_kl"] > self.kl_budget:
            ctx.request_stop(f"kl_budget: sqrt KL ({self.kl_estimator}) {out['eval/sqrt_kl']:.4f} > "
                             f"{self.kl_budget} at step {ctx.step}")

    def evaluate(self, model, tokenizer, seed: int) -> dict:
        t0 = time.perf_counter()
        pids = encode_prompts(tokenizer, self.prompts)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        kl_s = sample_responses(model, tokenizer, pids, self.kl_samples_per_prompt, 1.0, 1.0,
                                self.max_new_tokens, seed, self.batch_size)
        p_ids, r_ids = [pids[s.prompt_index] for s in kl_s], [s.response_ids for s in kl_s]
        lp_pol = sample_logps(model, pids, kl_s, self.batch_size, pad)
        lp_ref = score_responses(self.ref, p_ids, r_ids, self.batch_size, pad_id=pad)
        kl = kl_estimates(lp_pol, lp_ref, [s.prompt_index for s in kl_s])
        out = {"eval/kl_k1": kl["k1"], "eval/kl_k3": kl["k3"], "eval/sqrt_kl": kl[f"sqrt_{self.kl_estimator}"],
               "eval/kl_l_median": kl["l_median"]}
        if self.reward is not None:
            if self._chosen_rewards is None:
                self._chosen_rewards = score(self.reward, self.prompts, self.chosen)
            wr_s = sample_responses(model, tokenizer, pids, self.n_samples, self.temperature, self.top_p,
                                    self.max_new_tokens, seed + 1_000_003, self.batch_size)
            rewards = score(self.reward, [self.prompts[s.prompt_index] for s in wr_s], [s.text for s in wr_s])
            wr = win_rate(rewards, self._chosen_rewards, [s.prompt_index for s in wr_s])
            out.update({"eval/win_rate": wr["win_rate"], "eval/win_rate_se": wr["se"],
                        "eval/reward": float(np.mean(rewards)),
                        "eval/mean_length": float(np.mean([s.length for s in wr_s]))})
        out["eval/seconds"] = time.perf_counter() - t0
        return out
