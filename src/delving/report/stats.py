"""Intervals for errors measured over several seeds on one validation set, and verdicts decided by them.

Two noises make a mini study's error differ from the truth: the training seed (init, data order,
augmentation) and the finite validation set. An `Estimate` carries both: its variance is the spread
between seeds divided by the number of seeds, plus the variance of the mean over images (of the
seed-averaged per-image errors). The 95 % interval uses Student's t with Welch-Satterthwaite degrees
of freedom, so 3 seeds give a wide interval where the seeds disagree, and 1 seed gives an interval of
the test-set noise alone (flagged `seeds=1`).

A difference of two measures on the same images pairs them image by image (one set of images is
drawn once, and both models meet it); measures from the same runs (two scales of one model) pair by
seed too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy import stats as scipy_stats

from delving.paper import Expect

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean (in percent where it is an error) with its 95 % interval."""

    mean: float
    low: float
    high: float
    seeds: int
    images: int | None  # None: a per-seed number (a slope, a curve's mean), no image noise in it
    seed_std: float  # the spread between seeds (0 with one seed)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def text(self, digits: int = 2) -> str:
        """`61.23 [58.10, 64.36]`, or the mean alone where there is nothing to interval."""
        if not math.isfinite(self.low) or self.low == self.high:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


class Verdict(str, Enum):
    HOLDS = "holds"
    CONTRADICTED = "contradicted"
    INCONCLUSIVE = "inconclusive"


def verdict(difference: Estimate, expect: Expect, margin: float = 0.0) -> Verdict:
    """Holds where the whole interval says what the paper says, contradicted where the whole interval says
    the opposite, inconclusive where it straddles. LESS with a margin m means "below -m" (an error below
    chance by more than m points: a net that learned), GREATER alike; EQUAL: within ±m."""
    low, high = difference.low, difference.high
    if expect is Expect.LESS:
        return (
            Verdict.HOLDS
            if high < -margin
            else Verdict.CONTRADICTED
            if low >= -margin
            else Verdict.INCONCLUSIVE
        )
    if expect is Expect.GREATER:
        return (
            Verdict.HOLDS
            if low > margin
            else Verdict.CONTRADICTED
            if high <= margin
            else Verdict.INCONCLUSIVE
        )
    if -margin <= low and high <= margin:
        return Verdict.HOLDS
    return Verdict.CONTRADICTED if high < -margin or low > margin else Verdict.INCONCLUSIVE


def _interval(mean: float, parts: list[tuple[float, float]], seeds: int, images: int | None) -> Estimate:
    """parts: (variance of the mean, its degrees of freedom) of each independent noise."""
    variance = sum(v for v, _ in parts)
    if variance <= 0:
        return Estimate(mean, mean, mean, seeds, images, 0.0)
    # Welch-Satterthwaite; a part with no degrees of freedom (one seed) has no variance either.
    dof = variance**2 / sum(v**2 / d for v, d in parts if d > 0 and v > 0)
    half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, dof)) * math.sqrt(variance)
    return Estimate(mean, mean - half, mean + half, seeds, images, 0.0)


def _seed_part(per_seed: np.ndarray) -> tuple[float, float]:
    count = len(per_seed)
    if count < 2:
        return 0.0, 0.0
    return float(np.var(per_seed, ddof=1)) / count, float(count - 1)


def _with_std(estimate: Estimate, per_seed: np.ndarray) -> Estimate:
    std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
    return Estimate(estimate.mean, estimate.low, estimate.high, estimate.seeds, estimate.images, std)


def error_estimate(wrong: np.ndarray) -> Estimate:
    """wrong: (seeds, images) 0/1, one row per seed on the same images; the mean error in percent."""
    wrong = 100.0 * np.asarray(wrong, dtype=np.float64)
    seeds, images = wrong.shape
    per_seed = wrong.mean(axis=1)
    per_image = wrong.mean(axis=0)
    image_part = (float(np.var(per_image, ddof=1)) / images, float(images - 1)) if images > 1 else (0.0, 0.0)
    estimate = _interval(float(per_seed.mean()), [_seed_part(per_seed), image_part], seeds, images)
    # An error rate lies in [0, 100] whatever a t-interval of a few images says.
    low, high = max(estimate.low, 0.0), min(estimate.high, 100.0)
    return _with_std(Estimate(estimate.mean, low, high, seeds, images, 0.0), per_seed)


def _unknown(mean: float, seeds: int) -> Estimate:
    """A per-seed number from one seed: its spread is unknown, so is its interval (no verdict on it)."""
    return Estimate(mean, -math.inf, math.inf, seeds, None, 0.0)


def seed_estimate(values: np.ndarray) -> Estimate:
    """A number measured once per seed (a learned slope, the mean of a validation curve)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return _unknown(float(values.mean()), len(values))
    return _with_std(_interval(float(values.mean()), [_seed_part(values)], len(values), None), values)


def error_difference(a: np.ndarray, b: np.ndarray, same_runs: bool = False) -> Estimate:
    """(mean error of a) - (mean error of b), percent points; a, b: (seeds, images) 0/1 on the same images.

    same_runs: row i of a and of b come from one trained model (two tests of it), so seeds pair too.
    """
    a = 100.0 * np.asarray(a, dtype=np.float64)
    b = 100.0 * np.asarray(b, dtype=np.float64)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the two measures score different image counts ({a.shape[1]} and {b.shape[1]})")
    images = a.shape[1]
    per_image = a.mean(axis=0) - b.mean(axis=0)
    image_part = (float(np.var(per_image, ddof=1)) / images, float(images - 1))
    if same_runs:
        if a.shape[0] != b.shape[0]:
            raise ValueError("same_runs: both measures need one row per seed")
        per_seed = a.mean(axis=1) - b.mean(axis=1)
        seed_parts = [_seed_part(per_seed)]
    else:
        seed_parts = [_seed_part(a.mean(axis=1)), _seed_part(b.mean(axis=1))]
        per_seed = a.mean(axis=1)[: min(len(a), len(b))] - b.mean(axis=1)[: min(len(a), len(b))]
    estimate = _interval(float(per_image.mean()), [*seed_parts, image_part], min(len(a), len(b)), images)
    return _with_std(estimate, per_seed)


def seed_difference(a: np.ndarray, b: np.ndarray, same_runs: bool = False) -> Estimate:
    """mean(a) - mean(b) of per-seed numbers (b may be one constant, e.g. [95.0])."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if same_runs:
        return seed_estimate(a - b)
    if len(a) < 2 or len(b) < 2:
        return _unknown(float(a.mean() - b.mean()), min(len(a), len(b)))
    estimate = _interval(float(a.mean() - b.mean()), [_seed_part(a), _seed_part(b)], len(a), None)
    return _with_std(estimate, a)
