"""The paper's findings as comparisons of measured numbers, each decided by its 95 % interval.

A finding compares two measures (`a - b`) the way the paper states it: "PReLU's 10-view top-1 error is
below ReLU's" is `a` = the channel-wise net's ten_view error, `b` = the ReLU net's, expect LESS. A
measure names the paper's experiment (its `_mini` twin matches too), config values its runs must have
(`model.init=xavier`), and what is measured: a test's top-1 error read image by image from the runs'
predictions files, the mean of a validation curve, a learned-slope contrast, or a constant (chance).
Runs that differ only in `seed` are replicates; every number is their mean with an interval from
`delving.report.stats`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from delving.errors import UserError
from delving.evaluation.ensemble import combine
from delving.evaluation.metrics import true_class_rank
from delving.evaluation.predictions import Predictions, load_predictions
from delving.report.paper_slopes import TABLE1_SLOPES
from delving.report.runs import EvalRecord, Run, config_value, override_items
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

log = logging.getLogger("delving")

# "About equal" in the paper (0.06-0.07 points apart) is decided as "within this many points" here.
EQUAL_MARGIN = 2.0
PAPER_SCALES = (256, 384, 480)


class FindingInputError(UserError, ValueError):
    """Replicate runs that cannot be compared (different validation images); the message names them."""


@dataclass(frozen=True)
class Measure:
    """One side of a finding.

    kind: "error" (top-1 error of `protocol` at `scales`, image by image), "ensemble" (the mean softmax of
    `members`' predictions, seed by seed), "best" (the member with the lowest mean error), "curve" (the
    mean of the validation top-1 curve over epochs), "slope_conv1" (conv1's mean learned slope minus the
    mean of the deeper convs' means), "chance" (100 (1 - 1 / classes)).
    """

    kind: str
    experiment: str = ""
    protocol: str = ""
    scales: tuple[int, ...] = (256,)
    where: tuple[tuple[str, str], ...] = ()  # config key, value the runs must have
    members: tuple[Measure, ...] = ()
    label: str = ""
    k: int = 1  # top-k error (Table 7's claim is top-5)

    @property
    def name(self) -> str:
        return self.label or self.experiment


@dataclass(frozen=True)
class Finding:
    source: str  # "Table 2", "Fig. 3"
    claim: str  # the paper's statement, in words
    a: Measure
    b: Measure
    expect: Expect
    paper: str  # the paper's numbers for a and b
    margin: float = 0.0  # EQUAL: within ±margin; LESS / GREATER: beyond it


@dataclass
class FindingResult:
    finding: Finding
    a: Estimate | None = None
    b: Estimate | None = None
    difference: Estimate | None = None
    verdict: Verdict | None = None  # None: not run (the runs are missing)
    missing: str = ""
    seeds: list[int] = field(default_factory=list)
    b_note: str = ""  # which member was the best, for a "best" measure


def _error(experiment: str, protocol: str, scales: tuple[int, ...] = (256,), **where: str) -> Measure:
    return Measure("error", experiment, protocol, scales, tuple(where.items()))


def _chance(experiment: str, **where: str) -> Measure:
    return Measure("chance", experiment, where=tuple(where.items()), label="chance")


def _paper_slope_gap(column: int) -> str:
    """Table 1's conv1 slope against the mean of its deeper convs' (column 0: channel-shared, 1: wise)."""
    deeper = [
        v[column] for layer, v in TABLE1_SLOPES.items() if layer.startswith("conv") and layer != "conv1"
    ]
    conv1 = TABLE1_SLOPES["conv1"][column]
    return f"{conv1:.3f} - {np.mean(deeper):.3f} = {conv1 - np.mean(deeper):.3f}"


XAVIER, HE = {"model.init": "xavier"}, {"model.init": "he_fan_out"}
A_RELU, A_PRELU = "table4_model_a_relu", "table4_model_a_prelu"
B_PRELU, C_PRELU = "table6_model_b_prelu", "table6_model_c_prelu"
MULTI = PAPER_SCALES


def _top5(experiment: str) -> Measure:
    return Measure("error", experiment, "multiscale", MULTI, k=5)


TABLE7_MEMBERS = tuple(_top5(e) for e in (A_RELU, A_PRELU, B_PRELU, C_PRELU))

# The paper's findings that the (mini) experiments can test, in the order of the paper.
FINDINGS: tuple[Finding, ...] = (
    Finding(
        "Table 2",
        "PReLU channel-wise beats ReLU (10-view top-1)",
        _error("table2_net14_prelu", "ten_view"),
        _error("table2_net14_relu", "ten_view"),
        Expect.LESS,
        "32.64 vs 33.82",
    ),
    Finding(
        "Table 2",
        "PReLU channel-shared beats ReLU",
        _error("table2_net14_prelu_shared", "ten_view"),
        _error("table2_net14_relu", "ten_view"),
        Expect.LESS,
        "32.71 vs 33.82",
    ),
    Finding(
        "Table 2",
        f"channel-wise ≈ channel-shared (within ±{EQUAL_MARGIN:g} points)",
        _error("table2_net14_prelu", "ten_view"),
        _error("table2_net14_prelu_shared", "ten_view"),
        Expect.EQUAL,
        "32.64 vs 32.71",
        EQUAL_MARGIN,
    ),
    Finding(
        "Table 1",
        "channel-wise: conv1's learned slope is above the deeper convs' (mean slope, conv1 minus deeper)",
        Measure("slope_conv1", "table2_net14_prelu", label="conv1 - deeper"),
        Measure("constant", label="0"),
        Expect.GREATER,
        _paper_slope_gap(1),
    ),
    Finding(
        "Table 1",
        "channel-shared: conv1's learned slope is above the deeper convs'",
        Measure("slope_conv1", "table2_net14_prelu_shared", label="conv1 - deeper"),
        Measure("constant", label="0"),
        Expect.GREATER,
        _paper_slope_gap(0),
    ),
    Finding(
        "Fig. 2",
        f"22-layer model B, He init: converges (final centre-crop top-1 more than {EQUAL_MARGIN:g} points below chance)",
        _error("fig2_model_b", "center", **HE),
        _chance("fig2_model_b", **HE),
        Expect.LESS,
        "converges",
        EQUAL_MARGIN,
    ),
    Finding(
        "Fig. 2",
        "22-layer model B, Xavier init: converges too",
        _error("fig2_model_b", "center", **XAVIER),
        _chance("fig2_model_b", **XAVIER),
        Expect.LESS,
        "converges, later than He",
        EQUAL_MARGIN,
    ),
    Finding(
        "Fig. 2",
        "He lowers the error earlier (mean val top-1 over the epochs, He minus Xavier)",
        Measure("curve", "fig2_model_b", where=tuple(HE.items()), label="He curve"),
        Measure("curve", "fig2_model_b", where=tuple(XAVIER.items()), label="Xavier curve"),
        Expect.LESS,
        "He ahead at every epoch",
    ),
    Finding(
        "Fig. 3",
        "30-layer net, He init: converges",
        _error("fig3_deep30", "center", **HE),
        _chance("fig3_deep30", **HE),
        Expect.LESS,
        "converges",
        EQUAL_MARGIN,
    ),
    Finding(
        "Fig. 3",
        f"30-layer net, Xavier init: stalls at chance (within ±{EQUAL_MARGIN:g} points)",
        _error("fig3_deep30", "center", **XAVIER),
        _chance("fig3_deep30", **XAVIER),
        Expect.EQUAL,
        "stalls completely",
        EQUAL_MARGIN,
    ),
    *(
        Finding(
            "Table 4",
            f"model A: PReLU beats ReLU, dense at {scale}",
            _error(A_PRELU, "dense", (scale,)),
            _error(A_RELU, "dense", (scale,)),
            Expect.LESS,
            paper,
        )
        for scale, paper in ((256, "25.81 vs 26.25"), (384, "24.20 vs 24.77"), (480, "24.83 vs 25.46"))
    ),
    Finding(
        "Table 4",
        "model A: PReLU beats ReLU, multi-scale dense",
        _error(A_PRELU, "multiscale", MULTI),
        _error(A_RELU, "multiscale", MULTI),
        Expect.LESS,
        "22.97 vs 24.02",
    ),
    Finding(
        "Table 4",
        "model A PReLU: 384 beats 256 (dense)",
        _error(A_PRELU, "dense", (384,)),
        _error(A_PRELU, "dense", (256,)),
        Expect.LESS,
        "24.20 vs 25.81",
    ),
    Finding(
        "Table 4",
        "model A PReLU: multi-scale beats the best single scale (384)",
        _error(A_PRELU, "multiscale", MULTI),
        _error(A_PRELU, "dense", (384,)),
        Expect.LESS,
        "22.97 vs 24.20",
    ),
    Finding(
        "Table 5",
        "model A: PReLU beats ReLU, 10-view",
        _error(A_PRELU, "ten_view"),
        _error(A_RELU, "ten_view"),
        Expect.LESS,
        "25.59 vs 26.48",
    ),
    Finding(
        "Table 5",
        f"B ≈ A (PReLU, 10-view, within ±{EQUAL_MARGIN:g} points)",
        _error(B_PRELU, "ten_view"),
        _error(A_PRELU, "ten_view"),
        Expect.EQUAL,
        "25.53 vs 25.59",
        EQUAL_MARGIN,
    ),
    Finding(
        "Table 5",
        "the wider C beats B (10-view)",
        _error(C_PRELU, "ten_view"),
        _error(B_PRELU, "ten_view"),
        Expect.LESS,
        "24.27 vs 25.53",
    ),
    Finding(
        "Table 6",
        "C beats B (multi-scale dense)",
        _error(C_PRELU, "multiscale", MULTI),
        _error(B_PRELU, "multiscale", MULTI),
        Expect.LESS,
        "21.59 vs 22.85",
    ),
    Finding(
        "Table 6",
        "C beats A (PReLU, multi-scale dense)",
        _error(C_PRELU, "multiscale", MULTI),
        _error(A_PRELU, "multiscale", MULTI),
        Expect.LESS,
        "21.59 vs 22.97",
    ),
    Finding(
        "Table 7",
        "the ensemble of A-ReLU, A-PReLU, B, C (mean softmax) beats its best member (multi-scale, top-5)",
        Measure(
            "ensemble",
            members=TABLE7_MEMBERS,
            label="ensemble",
            k=5,
        ),
        Measure(
            "best",
            members=TABLE7_MEMBERS,
            label="best member",
            k=5,
        ),
        Expect.LESS,
        "4.94 top-5 (6 models) vs C's 5.71 (val)",
    ),
)


# ------------------------------------------------------------------ measuring


class ImageErrors(NamedTuple):
    """A measure's top-k errors image by image: one row per seed, columns in image-id order."""

    seeds: list[int]
    wrong: np.ndarray  # (seeds, images) bool
    runs: set[Path]  # the run folders they came from
    ids: np.ndarray  # (images,) the image ids, sorted


class MissingRuns(LookupError):
    """A measure whose runs or predictions files are not among the report's runs (the finding is not run)."""


def seed_of(run: Run) -> int:
    return int(run.config.get("seed") or 0)


def replicate_key(run: Run) -> tuple[str, tuple[tuple[str, str], ...]]:
    """What a run computed apart from its seed: the experiment and its other defining overrides."""
    items = {k: v for k, v in override_items(run).items() if k != "seed"}
    return run.name, tuple(sorted(items.items()))


def replicate_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs that differ only in their seed, each group sorted by seed (in the order first met)."""
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[replicate_key(run)].append(run)
    return [sorted(group, key=seed_of) for group in groups.values()]


def _matches(run: Run, measure: Measure) -> bool:
    if run.name not in (measure.experiment, f"{measure.experiment}_mini"):
        return False
    return all(config_value(run.config, key) == value for key, value in measure.where)


def _sorted_by_id(predictions: Predictions) -> Predictions:
    order = np.argsort(predictions.ids, kind="stable")
    return Predictions(
        predictions.ids[order], predictions.labels[order], predictions.probs[order], predictions.metadata
    )


class Evidence:
    """The report's runs, asked for measures; predictions files are read once and kept sorted by image id."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs
        self._predictions: dict[str, Predictions] = {}
        self._ranks: dict[str, np.ndarray] = {}  # the true class's rank per image, per predictions file
        self._warned: set[str] = set()

    def replicates(self, measure: Measure) -> list[Run]:
        groups = replicate_groups([run for run in self.runs if _matches(run, measure)])
        if not groups:
            raise MissingRuns(f"no run of {measure.experiment}")
        if len(groups) > 1 and measure.experiment not in self._warned:
            # Several settings of one experiment (an lr sweep...): the one with the most seeds speaks for it.
            self._warned.add(measure.experiment)
            log.warning(
                "%s: %d settings among the runs; the findings use the one with the most seeds",
                measure.experiment,
                len(groups),
            )
        return max(groups, key=len)

    def predictions(self, run: Run, measure: Measure) -> Predictions:
        record = self._record(run, measure)
        if record.source not in self._predictions:
            self._predictions[record.source] = _sorted_by_id(load_predictions(record.source))
        return self._predictions[record.source]

    @staticmethod
    def _record(run: Run, measure: Measure) -> EvalRecord:
        found = [
            record
            for record in run.evals
            if record.protocol == measure.protocol and tuple(record.scales or ()) == measure.scales
        ]
        scales = "/".join(map(str, measure.scales))
        if not found:
            raise MissingRuns(f"{run.path.name} has no {measure.protocol} test at {scales}")
        if len({(r.top1_error, r.top5_error, r.num_images) for r in found}) > 1:
            # Another checkpoint, split, flip setting or subset of the same protocol: never guess which
            # (copies of one file, which agree, are one test).
            names = ", ".join(Path(record.source).name for record in found)
            raise FindingInputError(
                f"{run.path}: {len(found)} predictions files of the {measure.protocol} test at {scales} "
                f"({names}); move all but the one of last.pt on the full val split out of the run folder"
            )
        return found[0]

    def per_image(self, measure: Measure) -> ImageErrors:
        """The measure's top-k errors image by image (k: measure.k)."""
        if measure.kind == "error":
            return self.errors(self.replicates(measure), measure, measure.k)
        if measure.kind == "ensemble":
            return self._ensemble(measure)
        if measure.kind == "best":
            return self.per_image(self.best_member(measure))
        raise ValueError(f"{measure.kind} is not measured image by image")

    def best_member(self, measure: Measure) -> Measure:
        """The member with the lowest mean error (ties: the first listed)."""
        return min(measure.members, key=lambda member: float(self.per_image(member).wrong.mean()))

    def _ensemble(self, measure: Measure) -> ImageErrors:
        members = [{seed_of(run): run for run in self.replicates(m)} for m in measure.members]
        seeds = sorted(set.intersection(*(set(by_seed) for by_seed in members)))
        if not seeds:
            raise MissingRuns("no seed that every member of the ensemble was trained with")
        rows, folders = [], set()
        for seed in seeds:
            preds = [
                self.predictions(by_seed[seed], m)
                for by_seed, m in zip(members, measure.members, strict=True)
            ]
            self._check_same_images(preds, [by_seed[seed].path for by_seed in members])
            rows.append(true_class_rank(combine([p.probs for p in preds]), preds[0].labels) >= measure.k)
            folders |= {by_seed[seed].path for by_seed in members}
        return ImageErrors(seeds, np.stack(rows), folders, preds[0].ids)

    def errors(self, runs: list[Run], test: Measure, k: int = 1) -> ImageErrors:
        """`test`'s top-k errors of each run (replicates), image by image."""
        preds = [self.predictions(run, test) for run in runs]
        self._check_same_images(preds, [run.path for run in runs])
        # Ranks once per file: every finding and table that reads it, at top-1 and top-5, shares them.
        sources = [self._record(run, test).source for run in runs]
        for source, pred in zip(sources, preds, strict=True):
            if source not in self._ranks:
                self._ranks[source] = true_class_rank(pred.probs, pred.labels)
        wrong = np.stack([self._ranks[source] >= k for source in sources])
        return ImageErrors([seed_of(run) for run in runs], wrong, {run.path for run in runs}, preds[0].ids)

    def replicates_of(self, run: Run) -> list[Run]:
        """The run and those that differ from it only in their seed."""
        key = replicate_key(run)
        return sorted((other for other in self.runs if replicate_key(other) == key), key=seed_of)

    @staticmethod
    def _check_same_images(preds: list[Predictions], where: list[Path]) -> None:
        for other, path in zip(preds[1:], where[1:], strict=True):
            if not np.array_equal(other.ids, preds[0].ids) or not np.array_equal(
                other.labels, preds[0].labels
            ):
                raise FindingInputError(
                    f"{path} and {where[0]} score different validation images or labels; replicates and "
                    "compared runs must be tested on one validation set"
                )

    def per_seed(self, measure: Measure) -> tuple[list[int], np.ndarray]:
        """Seeds and one number per seed: a curve's mean or conv1's slope contrast."""
        runs = self.replicates(measure)
        values = [self._seed_value(run, measure) for run in runs]
        return [seed_of(run) for run in runs], np.asarray(values, dtype=np.float64)

    @staticmethod
    def _seed_value(run: Run, measure: Measure) -> float:
        if measure.kind == "curve":
            curve = [v["val_top1_error"] for v in run.of_type("val")]
            if not curve:
                raise MissingRuns(f"{run.path.name} logged no validation")
            return float(np.mean(curve))
        means = {s.layer: s.mean for s in run.slopes}
        deeper = [mean for layer, mean in means.items() if layer.startswith("conv") and layer != "conv1"]
        if "conv1" not in means or not deeper:
            raise MissingRuns(f"{run.path.name} has no learned conv slopes")
        return means["conv1"] - float(np.mean(deeper))

    def chance(self, measure: Measure) -> float:
        run = self.replicates(measure)[0]
        if not run.num_classes:
            raise MissingRuns(f"{run.path.name}: class count unknown")
        return 100.0 * (1.0 - 1.0 / run.num_classes)


IMAGE_KINDS = ("error", "ensemble", "best")
CONSTANT_KINDS = ("chance", "constant")


def _shifted(estimate: Estimate, by: float) -> Estimate:
    return Estimate(
        estimate.mean + by,
        estimate.low + by,
        estimate.high + by,
        estimate.seeds,
        estimate.images,
        estimate.seed_std,
    )


def _constant(value: float) -> Estimate:
    return Estimate(value, value, value, 0, None, 0.0)


def decide(finding: Finding, evidence: Evidence) -> FindingResult:
    """The finding's two measures, their difference with its interval, and the verdict; a finding whose
    runs are missing comes back with `missing` set and no verdict."""
    result = FindingResult(finding)
    a, b = finding.a, finding.b
    try:
        if a.kind in IMAGE_KINDS:
            errors_a = evidence.per_image(a)
            result.a, result.seeds = error_estimate(errors_a.wrong), errors_a.seeds
            if b.kind in IMAGE_KINDS:
                errors_b = evidence.per_image(b)
                if not np.array_equal(errors_a.ids, errors_b.ids):
                    raise FindingInputError(
                        f"{finding.source}, {finding.claim}: its two sides are scored on different validation "
                        f"images ({len(errors_a.ids)} and {len(errors_b.ids)}); test both on one val split"
                    )
                result.b = error_estimate(errors_b.wrong)
                same_runs = errors_a.seeds == errors_b.seeds and bool(errors_a.runs & errors_b.runs)
                result.difference = error_difference(errors_a.wrong, errors_b.wrong, same_runs=same_runs)
                if b.kind == "best":
                    result.b_note = f" ({evidence.best_member(b).experiment})"
            else:
                value = evidence.chance(b) if b.kind == "chance" else 0.0
                result.b = _constant(value)
                result.difference = _shifted(result.a, -value)
        else:
            seeds_a, values_a = evidence.per_seed(a)
            result.a, result.seeds = seed_estimate(values_a), seeds_a
            if b.kind in CONSTANT_KINDS:
                result.b = _constant(0.0)
                result.difference = result.a
            else:
                _, values_b = evidence.per_seed(b)
                result.b = seed_estimate(values_b)
                result.difference = seed_difference(values_a, values_b)
    except MissingRuns as why:
        result.missing = str(why)
        return result
    result.verdict = verdict(result.difference, finding.expect, finding.margin)
    return result


def decide_all(
    runs: list[Run], findings: tuple[Finding, ...] = FINDINGS, evidence: Evidence | None = None
) -> list[FindingResult]:
    evidence = evidence or Evidence(runs)
    return [decide(finding, evidence) for finding in findings]
