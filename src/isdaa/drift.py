"""Golden-free drift signals and the alarm rule they feed (paper Section 4.3, Figure 6).

The paper reads the falling importance ratio pi_theta / pi_b of the training pairs as an "implicit
early stopping". Here that reading is made explicit: a signal series, a threshold, a trailing-mean
smoothing and a patience give an alarm step, which the lab compares with the golden win-rate peak and
with the step where the golden win rate has fallen by `drop` (0.05) from its peak. Pure functions of
numbers (no torch, no files): the lab analysis (`isdaa.lab.drift`) and the trainer's `stop_on_drift`
callback (`isdaa.train.drift_stop`) run the same `DriftRule`, so a replay on metrics.jsonl gives the
step the trainer would have stopped at.

Signals (`SIGNALS`): the trainer's per-batch metrics (`losses._metrics`, logged for every method):

    drift/log_ratio_mean  mean unclipped joint log pi_theta(y_c, y_r) / pi_b over the batch   (below)
    drift/ratio_mean      mean unclipped joint ratio (log-mean-exp, may be inf)               (below)
    drift/ess             ESS of the clipped weights the pair WOULD get, every method           (below)
    drift/clip_frac       fraction of those would-be weights at the clip exp(2 eps)            (above)
    is/ess                ESS of the clipped IS weights: CONSTANT 1 for non-IS methods         (below)
    is/clip_frac          fraction of weights clipped at exp(2 eps): CONSTANT 0 for non-IS     (above)

and the lab's probe (`ratios.jsonl`: a fixed set of training pairs scored at every checkpoint, the
clipped weights computed for every method): probe/log_ratio_mean, probe/ratio_mean, probe/ess,
probe/clip_frac. "below": the alarm is raised when the smoothed signal goes below the threshold.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Signal:
    name: str
    source: str  # "train" (metrics.jsonl records) | "probe" (ratios.jsonl rows)
    key: str  # the record's field
    direction: str  # "below" | "above": the side of the threshold that raises the alarm
    lower: float  # the signal's range, for threshold validation
    upper: float
    is_only: bool = False  # constant for methods without importance weights (w = 1)
    log: bool = False  # the record holds the log of the signal (probe/ratio_mean: ratio_mean_log)


SIGNALS: dict[str, Signal] = {s.name: s for s in (
    Signal("drift/log_ratio_mean", "train", "drift/log_ratio_mean", "below", -math.inf, math.inf),
    Signal("drift/ratio_mean", "train", "drift/ratio_mean", "below", 0.0, math.inf),
    Signal("drift/ess", "train", "drift/ess", "below", 0.0, 1.0),
    Signal("drift/clip_frac", "train", "drift/clip_frac", "above", 0.0, 1.0),
    Signal("is/ess", "train", "is/ess", "below", 0.0, 1.0, is_only=True),
    Signal("is/clip_frac", "train", "is/clip_frac", "above", 0.0, 1.0, is_only=True),
    Signal("probe/log_ratio_mean", "probe", "log_ratio_mean", "below", -math.inf, math.inf),
    Signal("probe/ratio_mean", "probe", "ratio_mean_log", "below", 0.0, math.inf, log=True),
    Signal("probe/ess", "probe", "ess", "below", 0.0, 1.0),
    Signal("probe/clip_frac", "probe", "clip_frac", "above", 0.0, 1.0),
)}
TRAIN_SIGNALS = tuple(n for n, s in SIGNALS.items() if s.source == "train")  # what stop_on_drift accepts

# The lab's candidate thresholds per signal, from lenient to strict.
THRESHOLDS: dict[str, tuple[float, ...]] = {
    "drift/log_ratio_mean": (-0.25, -0.5, -1.0, -2.0, -4.0, -8.0, -16.0, -32.0),
    "drift/ratio_mean": (0.95, 0.9, 0.75, 0.5, 0.25, 0.1, 0.01),
    "is/ess": (0.98, 0.95, 0.9, 0.8, 0.6, 0.4, 0.2),
    "is/clip_frac": (0.005, 0.01, 0.05, 0.1, 0.2, 0.4),
}
THRESHOLDS["drift/ess"], THRESHOLDS["drift/clip_frac"] = THRESHOLDS["is/ess"], THRESHOLDS["is/clip_frac"]
for _name in TRAIN_SIGNALS:
    THRESHOLDS["probe/" + _name.split("/", 1)[1]] = THRESHOLDS[_name]


def check_threshold(signal: str, threshold: float, what: str = "threshold") -> None:
    """ValueError unless `signal` is known and `threshold` lies strictly inside its range (a threshold
    at the range's edge could never, or would always, raise the alarm)."""
    if signal not in SIGNALS:
        raise ValueError(f"unknown drift signal {signal!r}; signals: {', '.join(SIGNALS)}")
    s = SIGNALS[signal]
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and s.lower < threshold < s.upper):
        raise ValueError(f"{what} for {signal} must be a finite number in ({s.lower:g}, {s.upper:g}), "
                         f"got {threshold!r}")


class DriftRule:
    """The alarm, one check at a time: the smoothed value is the mean of the last `smoothing` finite
    values (fewer at the start); the alarm fires at the check where the smoothed value has been beyond
    `threshold` (strictly below, or above for direction "above") for `patience` checks in a row. It
    fires once. A non-finite NaN value is not a check (a skipped non-finite step); +-inf counts."""

    def __init__(self, threshold: float, direction: str = "below", smoothing: int = 1, patience: int = 1):
        if direction not in ("below", "above"):
            raise ValueError(f"direction must be 'below' or 'above', got {direction!r}")
        if int(smoothing) < 1 or int(patience) < 1:
            raise ValueError(f"smoothing and patience must be >= 1, got {smoothing}, {patience}")
        self.threshold, self.direction = float(threshold), direction
        self.patience = int(patience)
        self.window: deque[float] = deque(maxlen=int(smoothing))
        self.streak, self.fired, self.smoothed = 0, False, math.nan

    def update(self, value: float) -> bool:
        """Feed one check's value; True exactly at the check where the alarm fires."""
        value = float(value)
        if math.isnan(value) or self.fired:
            return False
        self.window.append(value)
        self.smoothed = _mean(self.window)
        beyond = self.smoothed < self.threshold if self.direction == "below" else self.smoothed > self.threshold
        self.streak = self.streak + 1 if beyond else 0
        self.fired = self.streak >= self.patience
        return self.fired


def _mean(values) -> float:
    """Mean; a window holding +inf (drift/ratio_mean overflowed) is +inf, one holding both infs NaN."""
    values = list(values)
    pos, neg = math.inf in values, -math.inf in values
    if pos or neg:
        return math.nan if pos and neg else (math.inf if pos else -math.inf)
    return math.fsum(values) / len(values)


def alarm_step(steps: Sequence[int], values: Sequence[float], threshold: float, direction: str = "below",
               smoothing: int = 1, patience: int = 1) -> tuple[int | None, float]:
    """(step at which `DriftRule` fires on this series, the smoothed value there); (None, nan) if never."""
    rule = DriftRule(threshold, direction, smoothing, patience)
    for step, value in zip(steps, values):
        if rule.update(value):
            return int(step), rule.smoothed
    return None, math.nan


def series(records: Iterable[dict], signal: str, where: str = "records") -> tuple[list[int], list[float]]:
    """(steps, values) of `signal` from metrics.jsonl records (source "train") or ratios.jsonl rows
    (source "probe"), sorted by step; records without the field are not part of the series (eval-only
    records). A record with the field but no step, or a value that is not a number, is an error naming
    `where` and the record's position."""
    s = SIGNALS[signal]
    out = []
    for i, rec in enumerate(records, start=1):
        if s.key not in rec:
            continue
        value, step = rec[s.key], rec.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise ValueError(f"{where}: record {i} has no integer 'step' (got {step!r})")
        if value is None:
            value = math.nan  # a NaN written as null
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: record {i} (step {step}), field {s.key!r}: not a number ({value!r})")
        out.append((step, math.exp(value) if s.log else float(value)))
    out.sort(key=lambda t: t[0])
    return [t[0] for t in out], [t[1] for t in out]


def is_constant(values: Sequence[float]) -> bool:
    """True when a series carries no information (e.g. is/ess = 1 for a method without IS weights)."""
    finite = [v for v in values if not math.isnan(v)]
    return len(finite) == 0 or max(finite) - min(finite) == 0.0


# ---------------------------------------------------------------------------------------------------
# The golden reference: peak, decline, lead


@dataclass(frozen=True)
class GoldenEvents:
    peak_step: int
    peak_win_rate: float  # of the smoothed curve
    decline_step: int | None  # first checkpoint after the peak with smoothed win rate <= peak - drop
    final_step: int
    final_win_rate: float  # raw, the last checkpoint


def golden_events(steps: Sequence[int], win_rates: Sequence[float], drop: float = 0.05,
                  window: int = 1) -> GoldenEvents:
    """Peak (first maximum) of the golden win rate over the evaluated checkpoints (step 0 = pi_ref
    included when given), and the first later checkpoint whose win rate has fallen by `drop` or more.
    `window` > 1 smooths the curve first by a centered mean over that many checkpoints (fewer at the
    ends): a checkpoint's win rate carries a standard error of the order of `drop` itself."""
    if not steps or len(steps) != len(win_rates):
        raise ValueError("golden_events needs one win rate per step, at least one")
    pts = sorted(zip(steps, win_rates))
    smooth = centered_mean([w for _, w in pts], window)
    i_peak = max(range(len(pts)), key=lambda i: (smooth[i], -i))
    peak = smooth[i_peak]
    decline = next((pts[i][0] for i in range(i_peak + 1, len(pts)) if smooth[i] <= peak - drop + 1e-12), None)
    return GoldenEvents(int(pts[i_peak][0]), float(peak), decline, int(pts[-1][0]), float(pts[-1][1]))


def centered_mean(values: Sequence[float], window: int) -> list[float]:
    """Centered moving mean over `window` (odd) points; the window shrinks symmetrically-clipped at the ends."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd number >= 1, got {window}")
    h = window // 2
    return [math.fsum(values[max(0, i - h): i + h + 1]) / len(values[max(0, i - h): i + h + 1])
            for i in range(len(values))]


def lead(alarm: int | None, event: int | None) -> int | None:
    """Steps by which the alarm precedes the event (> 0: the alarm came first); None if either is absent."""
    return None if alarm is None or event is None else int(event) - int(alarm)


def win_rate_at(step: int | None, steps: Sequence[int], win_rates: Sequence[float]) -> float:
    """The golden win rate of the policy at `step`, linearly interpolated between evaluated checkpoints
    (clamped to the first / last); `step` None (the rule never fired) means the final checkpoint."""
    pts = sorted(zip(steps, win_rates))
    if step is None or step >= pts[-1][0]:
        return float(pts[-1][1])
    if step <= pts[0][0]:
        return float(pts[0][1])
    for (s0, w0), (s1, w1) in zip(pts, pts[1:]):
        if s0 <= step <= s1:
            return float(w0 + (w1 - w0) * (step - s0) / (s1 - s0))
    raise AssertionError("unreachable")


def split_seeds(seeds: Iterable[int]) -> tuple[list[int], list[int]]:
    """(selection seeds, held-out seeds): the first half (at least one) chooses thresholds, the rest
    reports. Three seeds: select on the lowest, report on the other two. One seed: nothing held out."""
    seeds = sorted(set(seeds))
    k = max(1, len(seeds) // 2)
    return seeds[:k], seeds[k:]
