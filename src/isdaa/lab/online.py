"""Online DPO (paper Eq. 10; METHOD.md "Online DPO") with the golden reward as labeller: the on-policy
reference line of the lab, through the engine's `batch_source` hook.

Each optimizer step: take the next `prompts_per_step` prompts of a seeded permutation of the prompt pool,
sample two responses per prompt from the CURRENT policy at temperature 1 (no top-p), score both with
r*, label by Bradley-Terry (first wins with probability sigmoid(r1 - r2)), and hand the pairs to the
trainer, which applies the plain DPO loss against pi_ref. This is the on-policy objective that IS-DPO
estimates offline from pi_ref's samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class OnlineDPOSource:
    """`batch_source(step, model, tokenizer) -> rows` for `isdaa.api.train`.

    Rows are the standard preference format (prompt, chosen, rejected) plus `chosen_logps` /
    `rejected_logps` (the sampling policy's log-probs: pi_b = pi_theta at this step; plain DPO ignores
    them). No reference columns: the engine scores pi_ref on the same tokenization it trains on.
    Deterministic given (seed, step): resuming at step s regenerates the same prompts and RNG streams.
    """

    tokenizer: object
    prompts: Sequence[str]
    reward: Callable  # the golden reward protocol: reward(prompts, responses) -> list[float] (the task's)
    max_new_tokens: int  # the task's generation limit
    prompts_per_step: int = 64
    seed: int = 0
    temperature: float = 1.0
    stats: list = field(default_factory=list)  # per step: mean reward of the samples, label agreement

    def prompts_for_step(self, step: int) -> list[str]:
        n, k = len(self.prompts), self.prompts_per_step
        epoch, start = divmod(step * k, n)
        out: list[str] = []
        while len(out) < k:
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            take = perm[start: start + k - len(out)]
            out += [self.prompts[i] for i in take]
            epoch, start = epoch + 1, 0
        return out

    @torch.no_grad()
    def __call__(self, step: int, model, tokenizer=None) -> list[dict]:
        from isdaa.evaluate.label import bt_pairs
        from isdaa.evaluate.sampling import encode_prompts, sample_responses
        from isdaa.logprobs import score_responses

        tok = tokenizer or self.tokenizer
        prompts = self.prompts_for_step(step)
        prompt_ids = encode_prompts(tok, prompts)
        samples = sample_responses(model, tok, prompt_ids, n=2, temperature=self.temperature, top_p=1.0,
                                   max_new_tokens=self.max_new_tokens, seed=self.seed * 1_000_003 + step,
                                   batch_size=1024)
        texts = [s.text for s in samples]
        rewards = np.asarray(self.reward([prompts[s.prompt_index] for s in samples], texts), dtype=np.float64)
        p_ids = [prompt_ids[s.prompt_index] for s in samples]
        r_ids = [s.response_ids for s in samples]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        lp_pol = score_responses(model, p_ids, r_ids, 1024, temperature=self.temperature, pad_id=pad)
        pairs = bt_pairs(rewards, np.random.default_rng([self.seed, step, 7]))
        rows = []
        for c, r in pairs:
            if not (texts[c].strip() and texts[r].strip()):
                continue  # an EOS-only response: the engine refuses blank responses (counted in stats)
            rows.append({
                "prompt": prompts[samples[c].prompt_index], "chosen": texts[c], "rejected": texts[r],
                "chosen_logps": float(lp_pol[c]), "rejected_logps": float(lp_pol[r]),
            })
        self.stats.append({"step": step, "sample_reward": float(rewards.mean()), "pairs": len(rows),
                           "label_agrees": float(np.mean([rewards[c] >= rewards[r] for c, r in pairs]))})
        return rows
