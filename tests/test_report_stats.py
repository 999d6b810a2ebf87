"""Intervals of seeded errors: their coverage in simulation, the t formula on known cases, and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from delving.report.stats import (
    Estimate,
    Expect,
    Verdict,
    error_difference,
    error_estimate,
    seed_difference,
    seed_estimate,
    verdict,
)


def _simulated_errors(rng: np.random.Generator, seeds: int, images: int, seed_sd: float, shift: float = 0.0):
    """A fresh validation sample (difficulty p ~ U(0.2, 0.8), population mean 0.5 + shift) and a fresh
    set of trainings (each seed moves every image's error probability by N(0, seed_sd))."""
    difficulty = rng.uniform(0.2, 0.8, size=images)
    moves = rng.normal(0.0, seed_sd, size=(seeds, 1))
    return rng.random((seeds, images)) < np.clip(difficulty + shift + moves, 0, 1), difficulty


@pytest.mark.parametrize(("seeds", "seed_sd"), [(3, 0.04), (1, 0.0), (5, 0.02)])
def test_the_error_interval_covers_the_truth_95_percent_of_the_time(seeds: int, seed_sd: float) -> None:
    rng = np.random.default_rng(0)
    trials = 600
    covered = sum(
        (e := error_estimate(_simulated_errors(rng, seeds, 400, seed_sd)[0])).low <= 50.0 <= e.high
        for _ in range(trials)
    )
    assert 0.92 <= covered / trials <= 0.985, covered / trials


def test_the_paired_difference_interval_covers_the_true_difference() -> None:
    rng = np.random.default_rng(1)
    trials, covered, widths = 500, 0, []
    for _ in range(trials):
        difficulty = rng.uniform(0.2, 0.8, size=400)
        a = rng.random((3, 400)) < np.clip(difficulty + rng.normal(0, 0.03, (3, 1)), 0, 1)
        b = rng.random((3, 400)) < np.clip(difficulty + 0.05 + rng.normal(0, 0.03, (3, 1)), 0, 1)
        estimate = error_difference(a, b)
        covered += estimate.low <= -5.0 <= estimate.high
        widths.append(estimate.half_width)
    assert 0.92 <= covered / trials <= 0.985, covered / trials
    # Seeds that disagree by 3 points dominate: the half-width is some 2-3x the test images' alone.
    assert 5.0 < float(np.median(widths)) < 12.0


def test_one_seed_gives_the_t_interval_of_the_images_alone() -> None:
    wrong = np.zeros((1, 1000), dtype=bool)
    wrong[0, :600] = True
    estimate = error_estimate(wrong)
    p = 0.6
    half = scipy_stats.t.ppf(0.975, 999) * math.sqrt(p * (1 - p) * 1000 / 999 / 1000) * 100
    assert estimate.mean == pytest.approx(60.0)
    assert (estimate.low, estimate.high) == pytest.approx((60.0 - half, 60.0 + half))
    assert estimate.seeds == 1 and estimate.seed_std == 0.0 and estimate.images == 1000


def test_seeds_that_disagree_widen_the_interval_by_student_t_with_few_degrees_of_freedom() -> None:
    # Every image alike within a seed (no image noise): the interval is the seeds' t-interval, 2 dof.
    wrong = np.zeros((3, 100), dtype=bool)
    wrong[0, :40], wrong[1, :50], wrong[2, :60] = True, True, True
    per_image_var = np.var(wrong.mean(axis=0) * 100, ddof=1) / 100
    estimate = error_estimate(wrong)
    seed_var = np.var([40.0, 50.0, 60.0], ddof=1) / 3
    variance = seed_var + per_image_var
    dof = variance**2 / (seed_var**2 / 2 + per_image_var**2 / 99)
    assert estimate.mean == pytest.approx(50.0) and estimate.seed_std == pytest.approx(10.0)
    assert estimate.half_width == pytest.approx(scipy_stats.t.ppf(0.975, dof) * math.sqrt(variance))
    assert estimate.half_width > 15  # t(2 dof) = 4.3: three seeds 10 points apart decide little


def test_seed_numbers_and_their_differences() -> None:
    estimate = seed_estimate(np.array([0.1, 0.2, 0.3]))
    assert estimate.mean == pytest.approx(0.2)
    assert estimate.half_width == pytest.approx(scipy_stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    same = seed_difference(np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.5, 2.5]), same_runs=True)
    assert (same.mean, same.low, same.high) == pytest.approx((0.5, 0.5, 0.5))  # a constant gap: no spread
    apart = seed_difference(np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.5, 2.5]))
    assert apart.mean == pytest.approx(0.5) and apart.low < 0 < apart.high


def test_the_difference_refuses_measures_of_different_images() -> None:
    with pytest.raises(ValueError, match="different image counts"):
        error_difference(np.zeros((3, 10)), np.zeros((3, 11)))


def _interval(low: float, high: float) -> Estimate:
    return Estimate((low + high) / 2, low, high, 3, 1000, 1.0)


@pytest.mark.parametrize(
    ("low", "high", "expect", "margin", "expected"),
    [
        (-3.0, -0.5, Expect.LESS, 0.0, Verdict.HOLDS),
        (-3.0, 0.5, Expect.LESS, 0.0, Verdict.INCONCLUSIVE),
        (0.5, 3.0, Expect.LESS, 0.0, Verdict.CONTRADICTED),
        (0.5, 3.0, Expect.GREATER, 0.0, Verdict.HOLDS),
        (-3.0, -0.5, Expect.GREATER, 0.0, Verdict.CONTRADICTED),
        # "below chance by more than 2": a stall at chance (an interval of image noise around 0) contradicts
        (-0.7, 0.7, Expect.LESS, 2.0, Verdict.CONTRADICTED),
        (-9.5, -2.7, Expect.LESS, 2.0, Verdict.HOLDS),
        (-3.0, -1.0, Expect.LESS, 2.0, Verdict.INCONCLUSIVE),
        (-1.5, 1.5, Expect.EQUAL, 2.0, Verdict.HOLDS),
        (-1.5, 2.5, Expect.EQUAL, 2.0, Verdict.INCONCLUSIVE),
        (2.5, 4.0, Expect.EQUAL, 2.0, Verdict.CONTRADICTED),
        (-4.0, -2.5, Expect.EQUAL, 2.0, Verdict.CONTRADICTED),
    ],
)
def test_verdicts(low: float, high: float, expect: Expect, margin: float, expected: Verdict) -> None:
    assert verdict(_interval(low, high), expect, margin) is expected
