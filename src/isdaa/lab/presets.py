"""The lab's presets: sizes of every stage and the grid of preference runs.

The main presets train in the paper's step regime (Appendix C: ~2,900 small AdamW steps, cosine
schedule, 100 warmup steps): >= 1,000 optimizer steps per run (2 epochs of ~37k pairs at batch 64),
cosine decay after an 8% warmup (~90 steps). The learning rate (`PAPER_LR`) was chosen once, on DPO
alone, before any IS run: the `calibrate` preset trains DPO at beta 0.01 over a ladder of rates and
the rule is "the smallest rate at which DPO visibly over-optimizes within 2 epochs" (smoothed peak -
final win rate > 0.1); see `CALIBRATION`.

`micro`     seconds, for tests: every stage on a toy budget (numbers are meaningless).
`quick`     <= 10 minutes on 2 cores: DPO and IS-DPO at beta 0.01 and 0.1, one seed, online DPO at
            beta 0.1, the report.
`paper`     Section 4.1's grid: 7 offline methods + online DPO, beta {0.01, 0.05, 0.1}, 3 seeds, and
            the clip ablation eps {0.5, 1, 2, 4} for IS-DPO at beta 0.01, 3 seeds.
`regimes`   where IS helps and where it fails: DPO vs IS-DPO (and its options) over the number of steps
            and the step size together, from the paper's regime to the first round's 114 large steps
            (where IS collapsed), Adam and SGD, 3 seeds.
`calibrate` DPO only at beta 0.01 over learning rates: how PAPER_LR was chosen.

Sizes of SFT and the environment follow LAB-NOTES (the feasibility run): SFT 40k demonstrations x 3
epochs at AdamW 3e-3; D_golden from 40k prompts (pairs of two identical responses are dropped).
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
    n_pairs: int | None = None  # train on the first n pairs of D_golden (None: all of them)
    scheduler: str | None = None  # None: the preset's
    warmup_ratio: float | None = None  # None: the preset's

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
        regime = "".join(f"_{k}={v}" for k, v in (("n", self.n_pairs), ("sched", self.scheduler),
                                                   ("warm", self.warmup_ratio)) if v is not None)
        return (f"{self.method}_b{self.beta:g}_lr{self.lr:g}_{self.optimizer}{opts}{regime}_s{self.seed}"
                .replace("/", "-"))

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


# The paper's regime (module docstring). Checkpoints dense early (the rise can last a few percent of
# training) and regular to the end (the "final" win rate averages the last checkpoints).
PAPER_LR = 3e-4  # Adam; chosen on DPO alone by the `calibrate` preset (CALIBRATION)
CALIBRATION = (
    "the rate was chosen once, on DPO alone at beta 0.01 (preset `calibrate`, Adam {lrs}, 1 seed), before "
    "any IS run: the smallest rate at which DPO's win rate visibly declines within 2 epochs (smoothed peak "
    "minus final > 0.1). Measured (2026-11-26, seed 0, peak -> final win rate, final KL): 3e-5 0.753 -> 0.726 "
    "(2.1), 1e-4 0.780 -> 0.771 (2.3), 3e-4 0.736 -> 0.086 (136): PAPER_LR = 3e-4"
)
CALIBRATION_LRS = (3e-5, 1e-4, 3e-4, 1e-3)
SAVE_FRACTIONS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.11, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# The first round's regime: 2 epochs of ~3.7k pairs (114 steps), constant Adam 2e-3 after a 10% warmup.
OLD_REGIME = {"n_pairs": 3_700, "scheduler": "constant", "warmup_ratio": 0.1}


@dataclass(frozen=True)
class Preset:
    name: str
    # SFT of pi_ref
    n_sft: int = 40_000
    sft_epochs: int = 3
    sft_batch: int = 128
    sft_lr: float = 3e-3
    # D_golden: prompts labelled (two pi_ref samples each); pairs of identical responses are dropped
    n_pairs: int = 40_000
    n_eval_prompts: int = 256  # held-out split (labelled too: the win rate compares with its chosen)
    # preference training (a RunSpec may override n_pairs / scheduler / warmup_ratio)
    epochs: int = 2
    batch: int = 64
    scheduler: str = "cosine"  # the engine's optim.scheduler, for every preference run
    warmup_ratio: float = 0.08  # linear warmup over this fraction of the steps (~90 of 1,158: paper 100)
    save_fractions: tuple[float, ...] = SAVE_FRACTIONS
    evaluation: EvalSpec = EvalSpec()
    runs: tuple[RunSpec, ...] = ()
    task_seed: int = 0
    overopt_drop: float = 0.05  # a run "over-optimized" when smoothed peak - final win rate exceeds this
    # offline runs: torch.compile the policy's layers where the machine can (models.compile_unavailable):
    # 5 s (warm cache) to 30 s (cold) once per worker process, repaid by ~6 s per 1,158-step run: worth it
    # for presets of tens of runs per worker
    compile: bool = True
    description: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["runs"] = [r.to_dict() for r in self.runs]
        return d


def grid(methods, betas, seeds, lrs=(PAPER_LR,), optimizers=("adamw",), options=((),), group="main", **regime):
    """Runs for every combination; `regime` sets RunSpec's n_pairs / scheduler / warmup_ratio."""
    return tuple(
        RunSpec(m, b, s, lr, opt, o, group, **regime)
        for m, b, lr, opt, o, s in itertools.product(methods, betas, lrs, optimizers, options, seeds)
    )


def _micro() -> Preset:
    runs = grid(("dpo", "is-dpo"), (0.1,), (0,), lrs=(2e-3,)) + grid(("online-dpo",), (0.1,), (0,), lrs=(2e-3,))
    return Preset(
        name="micro", n_sft=512, sft_epochs=1, sft_batch=64, n_pairs=128, n_eval_prompts=32, compile=False,
        epochs=1, batch=32, scheduler="constant", warmup_ratio=0.1, save_fractions=(0.5, 1.0),
        evaluation=EvalSpec(n_prompts=32, n_samples=2, n_kl_samples=1, n_ratio_pairs=64),
        runs=runs, description="seconds; for tests (numbers are meaningless)",
    )


def _quick() -> Preset:
    runs = grid(("dpo", "is-dpo"), (0.01, 0.1), (0,)) + grid(("online-dpo",), (0.1,), (0,))
    # not compiled: 4 offline runs do not repay a cold compilation (388 s with it, 356 s without; one run each)
    return Preset(name="quick", runs=runs, compile=False,
                  description="DPO and IS-DPO at beta 0.01/0.1, one seed, online DPO at beta 0.1; "
                              "the paper's regime (>= 1,000 small cosine-scheduled steps per run)")


CLIP_EPS = (0.5, 1.0, 2.0, 4.0)
CLIP_BETA = 0.01  # where DPO over-optimizes in this regime (the paper does not state Figure 5's beta)


def _paper() -> Preset:
    betas, seeds = (0.01, 0.05, 0.1), (0, 1, 2)
    runs = grid(OFFLINE_METHODS + ("online-dpo",), betas, seeds)
    runs += grid(("is-dpo",), (CLIP_BETA,), seeds, group="clip",
                 options=tuple((("is_clip", e),) for e in CLIP_EPS if e != 1.0))  # eps = 1: the main grid's run
    return Preset(name="paper", runs=runs,
                  description="Section 4.1: 7 methods + online DPO, 3 betas, 3 seeds, clip ablation (3 seeds)")


# The map of regimes, at beta 0.01 (where DPO over-optimizes in the paper's regime): each cell is a
# (number of steps, step size) pair; DPO and plain IS-DPO in every cell, IS-DPO's options (self-
# normalized, length-normalized ratio) in the two ends. Rates are not tuned for any method: the paper
# regime's is PAPER_LR, then a third of it (where DPO did not over-optimize in the calibration), the
# first round's (2e-3 Adam, 1.0 SGD: there IS collapsed) and a point between.
REGIME_BETA = 0.01
REGIME_CELLS = (
    # name, optimizer, lr, regime overrides
    ("paper", "adamw", PAPER_LR, {}),
    ("paper, lr/3", "adamw", PAPER_LR / 3, {}),
    ("1/3 steps, 3x lr", "adamw", 3 * PAPER_LR, {"n_pairs": 12_400}),
    ("first round", "adamw", 2e-3, OLD_REGIME),
    ("paper, sgd", "sgd", 0.3, {}),
    ("first round, sgd", "sgd", 1.0, OLD_REGIME),
)
REGIME_OPTION_CELLS = ("paper", "first round")
IS_OPTIONS = ((("is_self_normalize", True),), (("is_length_normalize", True),))


def _regimes() -> Preset:
    runs: tuple[RunSpec, ...] = ()
    seeds = (0, 1, 2)
    for name, opt, lr, regime in REGIME_CELLS:
        runs += grid(("dpo", "is-dpo"), (REGIME_BETA,), seeds, lrs=(lr,), optimizers=(opt,), group="regimes", **regime)
        if name in REGIME_OPTION_CELLS:
            runs += grid(("is-dpo",), (REGIME_BETA,), seeds, lrs=(lr,), optimizers=(opt,), options=IS_OPTIONS,
                         group="regimes", **regime)
    return Preset(name="regimes", runs=runs,
                  description="DPO vs IS-DPO (+ options) over steps x step size, Adam and SGD, beta 0.01, 3 seeds")


def _calibrate() -> Preset:
    runs = grid(("dpo",), (0.01,), (0,), lrs=CALIBRATION_LRS, group="calibrate")
    return Preset(name="calibrate", runs=runs, description="DPO alone at beta 0.01 over Adam rates: how PAPER_LR was chosen")


PRESETS = {"micro": _micro, "quick": _quick, "paper": _paper, "regimes": _regimes, "calibrate": _calibrate}


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
