"""Top-k error and per-class error on arrays of probabilities.

Tie rule: classes are ranked by descending probability and ties are broken by class index (the lower
index ranks first), as a stable sort would. So the error does not depend on the library's top-k, and a
uniform prediction counts as "class 0 first". The true class is within the top k when its rank < k.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 4096  # rows per comparison, so a 50k x 1000 array never needs a second full-size temporary


def true_class_rank(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of each row's true class under the tie rule above."""
    probs = np.asarray(probs)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"need probs (N, C) and labels (N,), got {probs.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got [{labels.min()}, {labels.max()}]")
    ranks = np.empty(len(labels), dtype=np.int64)
    class_index = np.arange(probs.shape[1])
    for start in range(0, len(labels), _CHUNK):
        rows = probs[start : start + _CHUNK]
        true = labels[start : start + _CHUNK]
        true_prob = rows[np.arange(len(true)), true][:, None]
        ahead = (rows > true_prob) | ((rows == true_prob) & (class_index < true[:, None]))
        ranks[start : start + _CHUNK] = ahead.sum(axis=1)
    return ranks


def topk_errors(probs: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Top-k error in percent for each k (k larger than the number of classes counts every image as right)."""
    ranks = true_class_rank(probs, labels)
    if not len(ranks):
        raise ValueError("no images to score")
    return {k: 100.0 * float(np.mean(ranks >= k)) for k in ks}


def per_class_error(probs: np.ndarray, labels: np.ndarray, num_classes: int, k: int = 5) -> np.ndarray:
    """Top-k error in percent of each class, NaN for a class with no image."""
    labels = np.asarray(labels, dtype=np.int64)
    wrong = true_class_rank(probs, labels) >= k
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    errors = np.bincount(labels, weights=wrong.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, 100.0 * errors / counts, np.nan)
