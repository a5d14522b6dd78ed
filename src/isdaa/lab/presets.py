"""The lab's presets: sizes of every stage, the grid of preference runs, and the task they run on.

The main presets train in the paper's step regime (Appendix C: ~2,900 small AdamW steps, cosine
schedule, 100 warmup steps): >= 1,000 optimizer steps per run (2 epochs of ~37k pairs at batch 64),
cosine decay after an 8% warmup (~90 steps). The learning rate is chosen once per task, on DPO alone,
before any other run: the `calibrate` preset trains DPO at beta 0.01 over `CALIBRATION_LRS` and the rule
(`CALIBRATION_RULE`) is "the smallest rate at which DPO visibly over-optimizes within 2 epochs" (smoothed
peak - final win rate > 0.1; if none does, the largest rate). `CALIBRATIONS` records each built-in task's
measured ladder; a task without one (a user's) runs at the key-token task's rate and the report says so.

`micro`     seconds, for tests: every stage and every arm once on a toy budget (numbers are meaningless).
`quick`     <= 10 minutes on 2 cores: DPO and IS-DPO at beta 0.01 and 0.1, one seed, online DPO at
            beta 0.1, the report.
`paper`     Section 4.1's grid: `PAPER_METHODS` + `MITIGATIONS` + online DPO, beta {0.01, 0.05, 0.1},
            3 seeds; the clip ablation eps `CLIP_EPS` for IS-DPO at beta 0.01, 3 seeds; the IS-weight
            `CONTROLS` (a group of their own) at beta 0.01, 3 seeds.
`regimes`   where IS helps and where it fails: DPO vs IS-DPO (and its options) over the number of steps
            and the step size together, from the paper's regime to the first round's 114 large steps
            (where IS collapsed), Adam and SGD, 3 seeds.
`calibrate` DPO only at beta 0.01 over learning rates: how the task's rate was chosen.

Sizes of SFT and the environment follow LAB-NOTES (the feasibility run): SFT 40k demonstrations x 3
epochs at AdamW 3e-3; D_golden from 40k prompts (pairs of two identical responses are dropped).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, replace

from isdaa.lab.keytoken import KeyTokenTask
from isdaa.lab.task import Task

# ---------------------------------------------------------------------------------------------------
# Report groups: every run belongs to one; the report gives each its section (one table of names)


@dataclass(frozen=True)
class Group:
    name: str
    title: str  # the report's section heading
    text: str  # what the group's runs are for


MAIN, CLIP, CONTROLS_GROUP, REGIMES, CALIBRATE = "main", "clip", "controls", "regimes", "calibrate"
GROUPS: dict[str, Group] = {g.name: g for g in (
    Group(MAIN, "Table 1 analog", "Section 4.1's grid: every method x beta x seed at the task's calibrated rate."),
    Group(CLIP, "Clip ablation", "IS-DPO over the clip eps (log w <= 2 eps), the main grid's run at the default eps."),
    Group(CONTROLS_GROUP, "IS-weight controls", "IS-DPO with the weights' pair-specific information removed "
          "(permuted, batch mean, matched-ESS random): which of IS-DPO's effects each keeps."),
    Group(REGIMES, "Regimes", "DPO vs IS-DPO over the number of steps and the step size."),
    Group(CALIBRATE, "Learning-rate calibration", "DPO alone over learning rates: how the task's rate was chosen."),
)}

# ---------------------------------------------------------------------------------------------------
# Methods: declared once, checked against the registry (isdaa.losses.METHODS) when a preset is built

ONLINE = "online-dpo"  # the lab's on-policy reference line (isdaa.lab.online), not a registry method


@dataclass(frozen=True)
class Arm:
    """One method line of a grid: a registry method (or online DPO) with loss options (the run's `loss`
    config) and top-level engine settings (e.g. a reference-sync block)."""

    method: str
    options: tuple[tuple[str, object], ...] = ()
    config: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "config", freeze(self.config))


def freeze(config) -> tuple:
    """Engine settings as hashable pairs: a dict value (e.g. ref_sync's block) becomes its sorted (key, value)
    pairs; `thaw` gives the dict back (the engine's config, lab_spec.json)."""
    return tuple((k, tuple(sorted(v.items())) if isinstance(v, dict) else v) for k, v in config)


def thaw(config) -> dict:
    """{setting: value} of `freeze`d pairs, nested pairs as dicts."""
    return {k: dict(v) if isinstance(v, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in v) else v
            for k, v in config}


PAPER_METHODS = ("dpo", "ipo", "is-dpo", "is-ipo", "rpo", "chipo", "rdpo")  # Section 4.1 / Table 1

# What a TRL user would use instead (issue 23), in the paper preset's main grid, each compared with IS-DPO.
# TR-DPO's sync period: TRL's default (alpha 0.6 every 512 steps) is tuned for runs of the paper's ~2,900
# steps (Appendix C), i.e. ~5.7 soft updates per run; the lab's runs are ~1,100-1,160 steps, so the period
# is scaled to keep that number of updates: 512 * 1,158 / 2,900 ~ 204 -> every 200 steps (5 updates).
TRDPO_SYNC = {"alpha": 0.6, "steps": 200}
WPO = Arm("dpo", (("wpo_weighting", True), ("wpo_max_weight", None)))  # TRL 1.x's use_weighting: no clamp
TRDPO = Arm("dpo", config=(("ref_sync", TRDPO_SYNC), ("ref_logps", "on_the_fly")))  # the reference moves
DPO_SFT = Arm("dpo-sft", (("dpo_sft_weight", 1.0),))  # TRL 1.x [sigmoid, sft], loss_weights [1, 1] (its default)
DPO_NORM = Arm("dpo-norm")  # TRL 1.x sigmoid_norm
MITIGATIONS: tuple[Arm, ...] = (WPO, TRDPO, DPO_SFT, DPO_NORM)
# The controls that separate what IS-DPO's weights do (docs/METHOD.md), in a group of their own at CLIP_BETA,
# each compared with IS-DPO and with DPO at that beta.
CONTROL_NAMES = ("permute", "mean", "matched_random")
CONTROLS: tuple[Arm, ...] = tuple(Arm("is-dpo", (("is_control", c),)) for c in CONTROL_NAMES)
OFFLINE_METHODS = PAPER_METHODS + tuple(dict.fromkeys(a.method for a in MITIGATIONS if a.method not in PAPER_METHODS))
# The trainer's settings every lab run shares beyond its RunSpec (part of the run's cache key): the size of
# each optimizer step, for the controls' question (a step that decays as the weights shrink).
ENGINE_EXTRAS = {"log_update_norm": True}


def arm_tags(options: dict, config: dict, clip: bool = True) -> list[str]:
    """How an arm's options and engine settings read in labels, e.g. `is-dpo[self-norm]`, `dpo[wpo]`,
    `dpo[ref_sync 0.6/200]`, `is-dpo[mean]`; `clip`: show is_clip (the clip ablation) or not."""
    tags = []
    for k, v in sorted(options.items(), key=lambda kv: (kv[0] == "wpo_max_weight", kv[0])):  # wpo, then its clamp
        if k == "is_clip":
            if clip:
                tags.append(f"eps={v:g}")
        elif k in ("is_self_normalize", "is_length_normalize"):
            if v:
                tags.append("self-norm" if k == "is_self_normalize" else "len-norm")
        elif k == "wpo_weighting":
            if v:
                tags.append("wpo")
        elif k == "wpo_max_weight":
            tags.append("no clamp" if v is None else f"clamp {v:g}")
        elif k == "is_control":
            if v != "none":
                tags.append(str(v))
        elif k == "dpo_sft_weight":
            tags.append(f"sft {v:g}")
        else:
            tags.append(f"{k}={v}")
    for k, v in config.items():
        if k == "ref_sync" and isinstance(v, dict):
            tags.append(f"ref_sync {v.get('alpha'):g}/{v.get('steps')}")
        elif k != "ref_logps":  # how the reference is computed, not what the arm is
            tags.append(k)
    return tags


def check_arm(arm: Arm) -> Arm:
    """The arm's method exists in the registry (or is online DPO); an error naming it otherwise."""
    from isdaa.losses import METHODS

    if arm.method != ONLINE and arm.method not in METHODS:
        raise ValueError(f"preset method {arm.method!r} is not in isdaa.losses.METHODS ({', '.join(METHODS)})")
    return arm


# ---------------------------------------------------------------------------------------------------
# Learning rates: one calibration per task


@dataclass(frozen=True)
class Calibration:
    """How a task's rate was chosen (`calibrate` preset, DPO alone at beta 0.01, 1 seed, before any other
    run of that task)."""

    lr: float
    measured: str  # the ladder's numbers (seed 0: smoothed peak -> final win rate, final KL)
    calibrated: bool = True

    def text(self) -> str:
        if not self.calibrated:
            return self.measured
        return (f"chosen once, on DPO alone at beta 0.01 (preset `calibrate`, Adam "
                f"{', '.join(f'{lr:g}' for lr in CALIBRATION_LRS)}, 1 seed), before any other run of the task: "
                f"{CALIBRATION_RULE}. {self.measured}: {self.lr:g}")


CALIBRATION_LRS = (3e-5, 1e-4, 3e-4, 1e-3)
CALIBRATION_RULE = ("the smallest rate at which DPO's win rate visibly declines within 2 epochs (smoothed peak "
                    "minus final > 0.1; if none does, the largest rate)")
CALIBRATIONS: dict[str, Calibration] = {
    "key-token": Calibration(3e-4, "Measured (2026-11-26, seed 0, peak -> final win rate, final KL): 3e-5 "
                                   "0.753 -> 0.726 (2.1), 1e-4 0.780 -> 0.771 (2.3), 3e-4 0.736 -> 0.086 (136)"),
    # The length task's version 2 (isdaa.lab.length): `isdaa lab --preset calibrate --task length`, 2026-12-06,
    # 18 min on the shared 2-core machine (load 4-6; 544 s of CPU: SFT + D_golden 183 s, 4 runs 365 s);
    # 35,771 pairs, 1,116 steps per run. No rate declined: by the rule, the largest.
    "length": Calibration(1e-3, "Measured on the task's version 2 (2026-12-06, seed 0, smoothed peak -> final win "
                                "rate, final KL): 3e-5 0.775 -> 0.755 (4.4), 1e-4 0.785 -> 0.781 (1.7), 3e-4 0.784 -> "
                                "0.784 (1.4), 1e-3 0.849 -> 0.849 (2.3): no rate declined"),
}
PAPER_LR = CALIBRATIONS["key-token"].lr  # Adam; the key-token task's


def calibration_for(task: Task) -> Calibration:
    """The task's calibration; a task without one runs at the key-token task's rate, and says so."""
    if task.name in CALIBRATIONS:
        return CALIBRATIONS[task.name]
    return Calibration(PAPER_LR, f"not calibrated for task {task.name!r}: the key-token task's rate; choose "
                                 f"one with `isdaa lab --preset calibrate --task ...` ({CALIBRATION_RULE})",
                       calibrated=False)


@dataclass(frozen=True)
class RunSpec:
    """One preference run of the sweep."""

    method: str  # a key of isdaa.losses.METHODS, or ONLINE
    beta: float
    seed: int
    lr: float
    optimizer: str = "adamw"  # adamw | sgd
    options: tuple[tuple[str, object], ...] = ()  # loss options (is_clip, is_self_normalize, ...)
    group: str = MAIN  # a key of GROUPS: which report section the run belongs to
    n_pairs: int | None = None  # train on the first n pairs of D_golden (None: all of them)
    scheduler: str | None = None  # None: the preset's
    warmup_ratio: float | None = None  # None: the preset's
    config: tuple[tuple[str, object], ...] = ()  # top-level engine settings of the arm (Arm.config)

    def __post_init__(self):
        object.__setattr__(self, "config", freeze(self.config))
        if self.group not in GROUPS:
            raise ValueError(f"run group {self.group!r} is not one of {', '.join(GROUPS)}")

    @property
    def online(self) -> bool:
        return self.method == ONLINE

    @property
    def label(self) -> str:
        """The method as the report names it (options folded in, e.g. is-dpo[self-norm])."""
        tags = arm_tags(dict(self.options), thaw(self.config), clip=self.group == CLIP)
        return self.method + (f"[{','.join(tags)}]" if tags else "")

    @property
    def run_id(self) -> str:
        """A file-name-safe unique name; stable across invocations (the resume key)."""
        opts = "".join(f"_{k}={v}" for k, v in self.options)
        conf = "".join(f"_{k}={_compact(v)}" for k, v in thaw(self.config).items())
        regime = "".join(f"_{k}={v}" for k, v in (("n", self.n_pairs), ("sched", self.scheduler),
                                                   ("warm", self.warmup_ratio)) if v is not None)
        return (f"{self.method}_b{self.beta:g}_lr{self.lr:g}_{self.optimizer}{opts}{conf}{regime}_s{self.seed}"
                .replace("/", "-"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["options"] = dict(self.options)
        d["config"] = thaw(self.config)
        d.update(run_id=self.run_id, label=self.label)
        return d


def _compact(v) -> str:
    if isinstance(v, dict):
        return "-".join(f"{k}{v[k]}" for k in sorted(v))
    return str(v)


@dataclass(frozen=True)
class EvalSpec:
    """Checkpoint evaluation (METHOD.md's protocol, scaled down)."""

    n_prompts: int = 256  # held-out prompts (paper: 512)
    n_samples: int = 2  # samples per prompt for the win rate, T=0.7 / top-p 0.95 (paper)
    temperature: float = 0.7
    top_p: float = 0.95
    n_kl_samples: int = 2  # T=1 samples per prompt for KL (unbiased; METHOD.md)
    n_ratio_pairs: int = 512  # training pairs on which the mean importance ratio is measured


# Checkpoints dense early (the rise can last a few percent of training) and regular to the end (the
# "final" win rate averages the last checkpoints).
SAVE_FRACTIONS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.11, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# The first round's regime: 2 epochs of ~3.7k pairs (114 steps), constant Adam 2e-3 after a 10% warmup.
OLD_REGIME = {"n_pairs": 3_700, "scheduler": "constant", "warmup_ratio": 0.1}


@dataclass(frozen=True)
class Preset:
    name: str
    task: Task = field(default_factory=KeyTokenTask)  # the environment (isdaa.lab.task)
    calibration: Calibration | None = None  # how the main runs' learning rate was chosen
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
        d = asdict(replace(self, task=None, runs=()))
        d["task"] = self.task.definition()
        d["calibration"] = None if self.calibration is None else dict(asdict(self.calibration),
                                                                        text=self.calibration.text())
        d["runs"] = [r.to_dict() for r in self.runs]
        return d


def grid(methods, betas, seeds, lrs=(PAPER_LR,), optimizers=("adamw",), options=((),), group=MAIN, **regime):
    """Runs for every combination; `methods` are names or Arms (an Arm's options come first); `regime` sets
    RunSpec's n_pairs / scheduler / warmup_ratio."""
    arms = [check_arm(m if isinstance(m, Arm) else Arm(m)) for m in methods]
    return tuple(
        RunSpec(a.method, b, s, lr, opt, a.options + o, group, config=a.config, **regime)
        for a, b, lr, opt, o, s in itertools.product(arms, betas, lrs, optimizers, options, seeds)
    )


def _micro(task: Task, cal: Calibration) -> Preset:
    # every arm of the paper preset once; TR-DPO syncs every 2 of the 4 steps so that a sync happens
    trdpo = replace(TRDPO, config=(("ref_sync", dict(TRDPO_SYNC, steps=2)), ("ref_logps", "on_the_fly")))
    arms = ("dpo", "is-dpo", ONLINE) + tuple(trdpo if a == TRDPO else a for a in MITIGATIONS)
    runs = grid(arms, (0.1,), (0,), lrs=(2e-3,)) + grid(CONTROLS, (0.1,), (0,), lrs=(2e-3,), group=CONTROLS_GROUP)
    return Preset(
        name="micro", task=task, n_sft=512, sft_epochs=1, sft_batch=64, n_pairs=128, n_eval_prompts=32, compile=False,
        epochs=1, batch=32, scheduler="constant", warmup_ratio=0.1, save_fractions=(0.5, 1.0),
        evaluation=EvalSpec(n_prompts=32, n_samples=2, n_kl_samples=1, n_ratio_pairs=64),
        runs=runs, description="seconds; for tests (numbers are meaningless)",
    )


def _quick(task: Task, cal: Calibration) -> Preset:
    runs = grid(("dpo", "is-dpo"), (0.01, 0.1), (0,), lrs=(cal.lr,)) + grid((ONLINE,), (0.1,), (0,), lrs=(cal.lr,))
    # not compiled: 4 offline runs do not repay a cold compilation (388 s with it, 356 s without; one run each)
    return Preset(name="quick", task=task, calibration=cal, runs=runs, compile=False,
                  description="DPO and IS-DPO at beta 0.01/0.1, one seed, online DPO at beta 0.1; "
                              "the paper's regime (>= 1,000 small cosine-scheduled steps per run)")


# The clip ablation: the paper's Figure 5 axis ("log eps" = our eps, `is_clip`: log w <= 2 eps) from the
# authors' release default 0.25 (weights capped at e^0.5 = 1.65) to 4 (e^8 = 2981); docs/METHOD.md.
CLIP_EPS = (0.25, 0.5, 1.0, 2.0, 4.0)
CLIP_BETA = 0.01  # where DPO over-optimizes in this regime (the paper does not state Figure 5's beta)
PAPER_BETAS, PAPER_SEEDS = (0.01, 0.05, 0.1), (0, 1, 2)


def _paper(task: Task, cal: Calibration) -> Preset:
    from isdaa.losses import OPTION_DEFAULTS

    lr = (cal.lr,)
    runs = grid(PAPER_METHODS + MITIGATIONS + (ONLINE,), PAPER_BETAS, PAPER_SEEDS, lrs=lr)
    runs += grid(("is-dpo",), (CLIP_BETA,), PAPER_SEEDS, lrs=lr, group=CLIP,  # the default eps: the main grid's run
                 options=tuple((("is_clip", e),) for e in CLIP_EPS if e != OPTION_DEFAULTS["is_clip"]))
    runs += grid(CONTROLS, (CLIP_BETA,), PAPER_SEEDS, lrs=lr, group=CONTROLS_GROUP)  # vs IS-DPO and DPO
    return Preset(name="paper", task=task, calibration=cal, runs=runs,
                  description="Section 4.1: the paper's methods + the mitigations + online DPO, 3 betas, 3 seeds; "
                              "clip ablation and IS-weight controls at beta 0.01 (3 seeds)")


# The map of regimes, at beta 0.01 (where DPO over-optimizes in the paper's regime): each cell is a
# (number of steps, step size) pair; DPO and plain IS-DPO in every cell, IS-DPO's options (self-
# normalized, length-normalized ratio) in the two ends. Rates are not tuned for any method: the task's
# calibrated rate, then a third of it, 1/3 of the steps at 3x, the first round's (2e-3 Adam, 1.0 SGD:
# there IS collapsed) and SGD in the paper's regime.
REGIME_BETA = 0.01
REGIME_CELLS = (
    # name, optimizer, lr (a multiple of the calibrated rate for Adam), regime overrides
    ("paper", "adamw", 1.0, {}),
    ("paper, lr/3", "adamw", 1 / 3, {}),
    ("1/3 steps, 3x lr", "adamw", 3.0, {"n_pairs": 12_400}),
    ("first round", "adamw", None, OLD_REGIME),  # None: 2e-3 fixed
    ("paper, sgd", "sgd", None, {}),  # SGD 0.3
    ("first round, sgd", "sgd", None, OLD_REGIME),  # SGD 1.0
)
FIXED_RATES = {"first round": 2e-3, "paper, sgd": 0.3, "first round, sgd": 1.0}
REGIME_OPTION_CELLS = ("paper", "first round")
# The is-dpo variants the regimes preset adds in REGIME_OPTION_CELLS: one loss-option set a run
# (not the registry's IS_OPTIONS, the names of every is_* option).
REGIME_IS_VARIANTS = ((("is_self_normalize", True),), (("is_length_normalize", True),))


def _regimes(task: Task, cal: Calibration) -> Preset:
    runs: tuple[RunSpec, ...] = ()
    seeds = (0, 1, 2)
    for name, opt, mult, regime in REGIME_CELLS:
        lr = FIXED_RATES[name] if mult is None else mult * cal.lr
        runs += grid(("dpo", "is-dpo"), (REGIME_BETA,), seeds, lrs=(lr,), optimizers=(opt,), group=REGIMES, **regime)
        if name in REGIME_OPTION_CELLS:
            runs += grid(("is-dpo",), (REGIME_BETA,), seeds, lrs=(lr,), optimizers=(opt,), options=REGIME_IS_VARIANTS,
                         group=REGIMES, **regime)
    return Preset(name="regimes", task=task, calibration=cal, runs=runs,
                  description="DPO vs IS-DPO (+ options) over steps x step size, Adam and SGD, beta 0.01, 3 seeds")


def _calibrate(task: Task, cal: Calibration) -> Preset:
    runs = grid(("dpo",), (0.01,), (0,), lrs=CALIBRATION_LRS, group=CALIBRATE)
    return Preset(name="calibrate", task=task, calibration=cal, runs=runs,
                  description="DPO alone at beta 0.01 over Adam rates: how the task's rate is chosen")


PRESETS = {"micro": _micro, "quick": _quick, "paper": _paper, "regimes": _regimes, "calibrate": _calibrate}


def get_preset(name: str, task: Task | None = None) -> Preset:
    """The preset `name` on `task` (default: the key-token task), at the task's calibrated rate."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    task = task if task is not None else KeyTokenTask()
    return PRESETS[name](task, calibration_for(task))


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


__all__ = ["GROUPS", "PRESETS", "Arm", "Calibration", "EvalSpec", "Preset", "RunSpec", "get_preset", "select_runs",
           "with_runs"]
