"""The report's runs asked for a finding's measures: replicates, predictions read image by image, per-seed numbers.

A measure (delving.paper.Measure) names the paper's experiment (its `_mini` twin matches too), config values
its runs must have (`model.init=xavier`), and what is measured: a test's top-1 error read image by image from
the runs' predictions files, the mean of a validation curve, a learned-slope contrast, or a constant
(chance). Runs that differ only in `seed` are replicates.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from delving.errors import UserError
from delving.evaluation.ensemble import combine
from delving.evaluation.metrics import true_class_rank
from delving.evaluation.predictions import Predictions, load_predictions
from delving.paper import Measure
from delving.report.runs import EvalRecord, Run, config_value, override_items

log = logging.getLogger("delving")


class FindingInputError(UserError, ValueError):
    """Replicate runs that cannot be compared (different validation images); the message names them."""


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


def _replicate_key(run: Run) -> tuple[str, tuple[tuple[str, str], ...]]:
    """What a run computed apart from its seed: the experiment and its other defining overrides."""
    items = {k: v for k, v in override_items(run).items() if k != "seed"}
    return run.name, tuple(sorted(items.items()))


def replicate_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs that differ only in their seed, each group sorted by seed (in the order first met). Two runs of one
    seed are not replicates (a run and its DDP twin, or copies in two folders): each goes to its own group."""
    groups: dict[tuple, list[list[Run]]] = defaultdict(list)
    for run in runs:
        same = groups[_replicate_key(run)]
        free = next((group for group in same if all(seed_of(r) != seed_of(run) for r in group)), None)
        if free is None:
            same.append([run])
        else:
            free.append(run)
    return [sorted(group, key=seed_of) for same in groups.values() for group in same]


def group_labels(groups: list[list[Run]]) -> list[str]:
    """A label for each replicate group, each a different one: a single run's own label, or the setting's; a
    label that would repeat gets its first run's folder name."""
    labels = [g[0].label if len(g) == 1 else g[0].setting_label for g in groups]
    repeated = {label for label in labels if labels.count(label) > 1}
    return [
        f"{label} ({g[0].path.name})" if label in repeated else label
        for label, g in zip(labels, groups, strict=True)
    ]


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
        key = _replicate_key(run)
        return sorted((other for other in self.runs if _replicate_key(other) == key), key=seed_of)

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
