"""`eval:`: the live over-optimization evaluation during training."""

from __future__ import annotations

from dataclasses import dataclass

from isdaa.config.checks import _check, _check_choices, one_of


@dataclass
class LiveEvalConfig:
    """Live over-optimization eval every `every` steps (isdaa.evaluate.live): KL(pi_theta || pi_ref) from
    T=1 samples, golden win rate against the chosen responses when `reward` is set, eval/* metrics."""

    reward: str | None = None          # reward-model folder or `module:function`; None: KL only
    prompts: str | None = None         # dataset with `prompt` (and `chosen`); default: data.eval (the
                                       # training data only when named here)
    split: str = "test"                # split of a hub `prompts` dataset
    every: int = 50                    # evaluate every N optimizer steps (and at the last step)
    n_prompts: int = 64                # the first N prompts, the same at every evaluation
    n: int = 2                         # samples per prompt for the win rate
    temperature: float = 0.7           # win-rate sampling (paper Appendix D); KL samples use T=1
    top_p: float = 0.95                # nucleus sampling for the win rate
    max_new_tokens: int = 128          # response length cap when sampling
    kl_samples: int = 1                # T=1 samples per prompt for the KL estimate
    kl_estimator: str = one_of("k1", "k3")  # k1 | k3: which one sqrt_kl and kl_budget use
    kl_budget: float | None = None     # stop the run once sqrt(KL) exceeds it
    batch_size: int = 64               # sampling batch
    at_start: bool = False             # also evaluate after step 1
    log_generations: int = 4           # rows of the generations table per eval (0: none)

    def __post_init__(self):
        for name in ("every", "n_prompts", "n", "max_new_tokens", "kl_samples", "batch_size"):
            _check(getattr(self, name) > 0, f"eval.{name} must be > 0")
        _check(self.temperature >= 0 and 0 < self.top_p <= 1, "eval.temperature must be >= 0, eval.top_p in (0, 1]")
        _check_choices(self, "eval.")
        _check(self.kl_budget is None or self.kl_budget > 0, "eval.kl_budget must be > 0")
        _check(self.log_generations >= 0, "eval.log_generations must be >= 0")
