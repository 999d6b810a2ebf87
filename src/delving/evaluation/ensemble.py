"""Combine predictions files: check they describe the same images, average, select, and analyse per class."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from delving.data.datasets import first_difference
from delving.errors import UserError
from delving.evaluation.metrics import per_class_error, topk_errors
from delving.evaluation.predictions import Predictions


class EnsembleMismatchError(UserError, ValueError):
    """Predictions files that cannot be combined: different data sets, classes, images or labels."""


class EnsembleOptionError(UserError, ValueError):
    """An ensemble option that cannot work (weights, names, selection fraction); the message names it."""


def check_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """The weights as float64 (ones when None): finite, non-negative, one per file, with a positive sum."""
    w = np.ones(count) if weights is None else np.asarray(list(weights), dtype=np.float64)
    if w.shape != (count,):
        raise EnsembleOptionError(f"{len(w)} weights for {count} predictions files")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise EnsembleOptionError(
            f"weights must be finite and non-negative with a positive sum, got {w.tolist()}"
        )
    return w


def member_names(files: Sequence[str | os.PathLike]) -> list[str]:
    """A short unique name per file: its name without .npz; where those repeat (every run writes
    predictions-<protocol>.npz), the run folder's name when all the file names are the same, else
    `<folder>/<name>` with as many parent folders as it takes."""
    paths = [Path(os.path.abspath(f)) for f in files]
    seen: dict[Path, int] = {}
    for i, path in enumerate(paths):
        if path in seen:
            raise EnsembleOptionError(f"files lists {path} twice (entries {seen[path]} and {i})")
        seen[path] = i
    stems = [p.name.removesuffix(".npz") for p in paths]
    candidates = [stems]
    if len(set(stems)) == 1:
        candidates.append([p.parent.name for p in paths])
    depth = max(len(p.parts) for p in paths)
    candidates += [
        ["/".join([*p.parent.parts[-up:], s]) for p, s in zip(paths, stems, strict=True)]
        for up in range(1, depth)
    ]
    return next(
        (names for names in candidates if len(set(names)) == len(names) and all(names)),
        [str(p) for p in paths],
    )


def check_compatible(preds: Sequence[Predictions], names: Sequence[str]) -> None:
    """Raises EnsembleMismatchError naming the two files and how they differ (each file against the first)."""
    ref, ref_name = preds[0], names[0]
    ref_data = (ref.metadata["dataset"]["name"], ref.metadata["dataset"]["split"])
    for pred, name in zip(preds[1:], names[1:], strict=True):
        pair = f"{ref_name} and {name}"
        data = (pred.metadata["dataset"]["name"], pred.metadata["dataset"]["split"])
        if data != ref_data:
            raise EnsembleMismatchError(
                f"{pair} are over different data sets: {'/'.join(ref_data)} vs {'/'.join(data)}"
            )
        if pred.classes != ref.classes:
            how = (
                "the same classes in a different order (class indices would not match)"
                if sorted(pred.classes) == sorted(ref.classes)
                else f"different class lists ({len(ref.classes)} vs {len(pred.classes)} classes, "
                f"{first_difference(ref.classes, pred.classes)})"
            )
            raise EnsembleMismatchError(f"{pair} have {how}")
        ref_ids, ids = ref.ids.tolist(), pred.ids.tolist()
        if ids != ref_ids:
            only_ref, only_new = sorted(set(ref_ids) - set(ids)), sorted(set(ids) - set(ref_ids))
            if not only_ref and not only_new:
                raise EnsembleMismatchError(
                    f"{pair} hold the same images in a different order ({first_difference(ref_ids, ids)})"
                )
            raise EnsembleMismatchError(
                f"{pair} are over different images: {len(only_ref)} only in {ref_name} (e.g. {only_ref[:3]}), "
                f"{len(only_new)} only in {name} (e.g. {only_new[:3]})"
            )
        differ = np.flatnonzero(pred.labels != ref.labels)
        if len(differ):
            i = int(differ[0])
            raise EnsembleMismatchError(
                f"{pair} give different labels to {len(differ)} images, e.g. {ref_ids[i]}: "
                f"{ref.labels[i]} vs {pred.labels[i]}"
            )


def combine(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The (weighted) mean of the models' probabilities, float64; weights are normalised to sum to 1."""
    w = check_weights(weights, len(probs))
    w = w / w.sum()
    total = np.zeros(probs[0].shape, dtype=np.float64)
    for p, weight in zip(probs, w, strict=True):
        total += weight * p.astype(np.float64)
    return total


def _score(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    errors = topk_errors(probs, labels)
    return errors[5], errors[1]  # top-5 first: the paper's headline metric decides


@dataclass
class Selection:
    chosen: list[int]  # model indices in the order they were added
    trace: list[tuple[int, float, float]]  # (model added, top-5, top-1 on the selection images)


def greedy_select(probs: Sequence[np.ndarray], labels: np.ndarray, rows: np.ndarray) -> Selection:
    """Forward selection without repeats: add the model that lowers the mean's top-5 error (then top-1) on
    `rows` the most; stop when no model lowers it. Ties go to the earlier file."""
    chosen: list[int] = []
    trace: list[tuple[int, float, float]] = []
    total = np.zeros((len(rows), probs[0].shape[1]), dtype=np.float64)
    best = (float("inf"), float("inf"))
    while len(chosen) < len(probs):
        candidates = [
            (_score((total + probs[m][rows]) / (len(chosen) + 1), labels[rows]), m)
            for m in range(len(probs))
            if m not in chosen
        ]
        score, model = min(candidates, key=lambda c: (c[0], c[1]))
        if score >= best:
            break
        best = score
        chosen.append(model)
        total += probs[model][rows]
        trace.append((model, score[0], score[1]))
    return Selection(chosen, trace)


def split_rows(num_images: int, select_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection rows, report rows): a seeded random split, each sorted, neither empty."""
    if not 0.0 < select_fraction < 1.0:
        raise EnsembleOptionError(f"select_fraction must be in (0, 1), got {select_fraction}")
    num_select = round(num_images * select_fraction)
    if not 0 < num_select < num_images:
        raise EnsembleOptionError(f"{num_images} images cannot be split {select_fraction:.0%} / rest")
    order = np.random.default_rng(seed).permutation(num_images)
    return np.sort(order[:num_select]), np.sort(order[num_select:])


@dataclass
class ClassChanges:
    fell: int
    same: int
    rose: int
    changes: list[tuple[str, float, float]]  # (class name, baseline error, new error), largest moves first


def per_class_changes(
    baseline: np.ndarray, new: np.ndarray, labels: np.ndarray, class_names: Sequence[str], k: int = 5
) -> ClassChanges:
    """How each class's top-k error moved from `baseline` to `new` (the paper: fell 824, same 127, rose 49)."""
    before = per_class_error(baseline, labels, len(class_names), k)
    after = per_class_error(new, labels, len(class_names), k)
    present = ~np.isnan(before)
    delta = np.where(present, after - before, 0.0)
    order = np.argsort(-np.abs(delta), kind="stable")
    changes = [
        (class_names[c], float(before[c]), float(after[c])) for c in order if present[c] and delta[c] != 0
    ]
    return ClassChanges(
        fell=int((delta[present] < 0).sum()),
        same=int((delta[present] == 0).sum()),
        rose=int((delta[present] > 0).sum()),
        changes=changes,
    )


@dataclass
class ClassSummary:
    zero_error_classes: int
    classes_scored: int
    worst: list[tuple[str, float]]  # (class name, top-k error %), worst first


def class_summary(
    probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str], worst: int = 10, k: int = 5
) -> ClassSummary:
    errors = per_class_error(probs, labels, len(class_names), k)
    present = np.flatnonzero(~np.isnan(errors))
    order = present[np.argsort(-errors[present], kind="stable")][:worst]
    return ClassSummary(
        zero_error_classes=int((errors[present] == 0).sum()),
        classes_scored=len(present),
        worst=[(class_names[c], float(errors[c])) for c in order],
    )
