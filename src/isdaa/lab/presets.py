"""The lab's presets: sizes of every stage and the grid of preference runs.

`micro`   seconds, for tests: every stage on a toy budget (numbers are meaningless).
`quick`   <= 10 minutes on a 2-core laptop: DPO, IS-DPO, IPO, IS-IPO at beta 0.01 and 0.1, one seed,
          online DPO at beta 0.1, the report.
`paper`   Section 4.1's grid: 7 offline methods + online DPO, beta {0.01, 0.05, 0.1}, 3 seeds,
          2 epochs, and the clip ablation eps {0.5, 1, 2, 4} for IS-DPO (beta 0.1).
`regimes` DPO vs IS-DPO vs IS with a self-normalized / length-normalized ratio, across learning rates
          from "the policy barely moves per step" to "aggressive", Adam and SGD.

Sizes follow LAB-NOTES.md (the feasibility run): SFT 40k demonstrations x 3 epochs at AdamW 3e-3,
4,000 preference pairs, 2 epochs of batch 64 pairs at Adam 2e-3.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace

OFFLINE_METHODS = ("dpo", "ipo", "is-dpo", "is-ipo", "rpo", "chipo", "rdpo")


@dataclass(frozen=True)
class RunSpec:
    """One preference run of the sweep."""

    method: str  # a key of isdaa.losses.METHODS, or "online-dpo"
    beta: float
    seed: int
    lr: float
    optimizer: str = "adamw"  # adamw | sgd
    options: tuple[tuple[str, object], ...] = ()  # loss options (is_clip, is_self_normalize, ...)
    group: str = "main"  # main | clip | regimes: which report section the run belongs to

    @property
    def online(self) -> bool:
        return self.method == "online-dpo"

    @property
    def label(self) -> str:
        """The method as the report names it (options folded in, e.g. is-dpo[self-norm])."""
        tags = []
        for k, v in self.options:
            if k == "is_clip" and self.group == "clip":
                tags.append(f"eps={v:g}")
            elif k == "is_self_normalize" and v:
                tags.append("self-norm")
            elif k == "is_length_normalize" and v:
                tags.append("len-norm")
        return self.method + (f"[{','.join(tags)}]" if tags else "")

    @property
    def run_id(self) -> str:
        """A file-name-safe unique name; stable across invocations (the resume key)."""
        opts = "".join(f"_{k}={v}" for k, v in self.options)
        return f"{self.method}_b{self.beta:g}_lr{self.lr:g}_{self.optimizer}{opts}_s{self.seed}".replace("/", "-")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["options"] = dict(self.options)
        d.update(run_id=self.run_id, label=self.label)
        return d


@dataclass(frozen=True)
class EvalSpec:
    """Checkpoint evaluation (METHOD.md's protocol, scaled down)."""

    n_prompts: int = 256  # held-out prompts (paper: 512)
    n_samples: int = 2  # samples per prompt for the win rate, T=0.7 / top-p 0.95 (paper)
    temperature: float = 0.7
    top_p: float = 0.95
    n_kl_samples: int = 2  # T=1 samples per prompt for KL (unbiased; METHOD.md)
    n_ratio_pairs: int = 512  # training pairs on which the mean importance ratio is measured


@dataclass(frozen=True)
class Preset:
    name: str
    # SFT of pi_ref
    n_sft: int = 40_000
    sft_epochs: int = 3
    sft_batch: int = 128
    sft_lr: float = 3e-3
    # D_golden
    n_pairs: int = 4_000
    n_eval_prompts: int = 256  # held-out split (labelled too: the win rate compares with its chosen)
    # preference training
    epochs: int = 2
    batch: int = 64
    scheduler: str = "constant"  # the engine's optim.scheduler, for every preference run
    warmup_ratio: float = 0.1  # linear warmup over this fraction of the steps
    save_fractions: tuple[float, ...] = (0.02, 0.05, 0.08, 0.12, 0.16, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
    evaluation: EvalSpec = EvalSpec()
    runs: tuple[RunSpec, ...] = ()
    task_seed: int = 0
    overopt_drop: float = 0.05  # a run "over-optimized" when peak - final win rate exceeds this
    description: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["runs"] = [r.to_dict() for r in self.runs]
        return d


def grid(methods, betas, seeds, lrs=(2e-3,), optimizers=("adamw",), options=((),), group="main"):
    return tuple(
        RunSpec(m, b, s, lr, opt, o, group)
        for m, b, lr, opt, o, s in itertools.product(methods, betas, lrs, optimizers, options, seeds)
    )


def _micro() -> Preset:
    runs = grid(("dpo", "is-dpo"), (0.1,), (0,)) + grid(("online-dpo",), (0.1,), (0,))
    return Preset(
        name="micro", n_sft=512, sft_epochs=1, sft_batch=64, n_pairs=128, n_eval_prompts=32,
        epochs=1, batch=32, save_fractions=(0.5, 1.0),
        evaluation=EvalSpec(n_prompts=32, n_samples=2, n_kl_samples=1, n_ratio_pairs=64),
        runs=runs, description="seconds; for tests (numbers are meaningless)",
    )


def _quick() -> Preset:
    runs = grid(("dpo", "is-dpo", "ipo", "is-ipo"), (0.01, 0.1), (0,)) + grid(("online-dpo",), (0.1,), (0,))
    return Preset(name="quick", runs=runs,
                  description="DPO, IS-DPO, IPO, IS-IPO at beta 0.01/0.1, one seed, online DPO at beta 0.1")


def _paper() -> Preset:
    betas, seeds = (0.01, 0.05, 0.1), (0, 1, 2)
    runs = grid(OFFLINE_METHODS + ("online-dpo",), betas, seeds)
    runs += grid(("is-dpo",), (0.1,), seeds, options=tuple((("is_clip", e),) for e in (0.5, 2.0, 4.0)),
                 group="clip")  # eps = 1 is the main grid's is-dpo run (default is_clip)
    return Preset(name="paper", runs=runs, description="Section 4.1: 7 methods + online DPO, 3 betas, 3 seeds, clip ablation")


# Learning rates from "barely moves per step" (log-ratios stay O(1) over 2 epochs, like a 3B model at
# 1e-6) to "aggressive"; SGD needs far larger steps than Adam for the same movement.
REGIME_LRS = {"adamw": (3e-5, 1e-4, 5e-4, 2e-3, 8e-3), "sgd": (0.03, 0.3, 3.0)}
REGIME_VARIANTS = (
    ("dpo", ()),
    ("is-dpo", ()),
    ("is-dpo", (("is_self_normalize", True),)),
    ("is-dpo", (("is_length_normalize", True),)),
)


def _regimes() -> Preset:
    runs: tuple[RunSpec, ...] = ()
    for opt, lrs in REGIME_LRS.items():
        for method, opts in REGIME_VARIANTS:
            runs += grid((method,), (0.1,), (0, 1), lrs=lrs, optimizers=(opt,), options=(opts,), group="regimes")
    return Preset(name="regimes", runs=runs, description="DPO vs IS-DPO variants across learning rates, Adam and SGD")


PRESETS = {"micro": _micro, "quick": _quick, "paper": _paper, "regimes": _regimes}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()


def select_runs(runs, methods=None, betas=None, seeds=None, only=None) -> tuple[RunSpec, ...]:
    """Filter the grid: `methods`/`betas`/`seeds` are allow-lists; `only` is a list of substrings of
    run ids (any match keeps the run)."""
    out = []
    for r in runs:
        if methods and r.method not in methods:
            continue
        if betas and not any(abs(r.beta - b) < 1e-12 for b in betas):
            continue
        if seeds and r.seed not in seeds:
            continue
        if only and not any(o in r.run_id for o in only):
            continue
        out.append(r)
    return tuple(out)


def with_runs(preset: Preset, runs) -> Preset:
    return replace(preset, runs=tuple(runs))


__all__ = ["PRESETS", "EvalSpec", "Preset", "RunSpec", "get_preset", "select_runs", "with_runs"]
