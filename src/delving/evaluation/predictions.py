"""Predictions files: one per model and protocol, an `.npz` that NumPy alone reads.

Arrays: `ids` (N,) str, the image paths relative to the split folder; `labels` (N,) int64, class
indices into `classes`; `probs` (N, C) float32 or float16, the averaged softmax of each image;
`metadata` a 0-d str holding a JSON object (format version, model name and config, checkpoint
sha256, protocol, scales, flips, data set, split, class list, errors). See docs/evaluation.md.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from delving.errors import UserError
from delving.io import atomic_write

FORMAT_VERSION = 1
_ARRAYS = ("ids", "labels", "probs", "metadata")
_SUM_TOLERANCE = {np.dtype(np.float16): 1e-2, np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-6}
_REQUIRED = ("classes", "dataset", "protocol")
# The JSON type of each metadata key the tools read (a file may come from anyone, or an older tool).
_METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "classes": (list,),
    "class_names": (list, type(None)),
    "dataset": (dict,),
    "protocol": (str,),
    "model": (dict,),
    "model_config": (dict,),
    "checkpoint": (dict, str, type(None)),
    "scales": (list, type(None)),
    "num_images": (int,),
    "skipped_images": (int,),
    "top1_error": (int, float),
    "top5_error": (int, float),
}
_JSON_NAMES = {list: "a list", dict: "an object", str: "a string", int: "a number", float: "a number"}


class PredictionsFileError(UserError, ValueError):
    """A predictions file that is missing, partial, corrupt or inconsistent; the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)


@dataclass
class Predictions:
    ids: np.ndarray  # (N,) str
    labels: np.ndarray  # (N,) int64
    probs: np.ndarray  # (N, C) float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def class_names(self) -> list[str]:
        """Human-readable names where the data set has them, else the class folder names."""
        return list(self.metadata.get("class_names") or self.metadata["classes"])

    @property
    def num_images(self) -> int:
        return len(self.ids)


def _json_type(value: Any) -> str:
    return "null" if value is None else _JSON_NAMES.get(type(value), type(value).__name__)


def check_metadata(meta: Any, where: str | os.PathLike = "predictions") -> None:
    """Raises PredictionsFileError naming the key unless the metadata has the JSON types the tools read."""
    if not isinstance(meta, dict):
        raise PredictionsFileError(where, f"metadata is {_json_type(meta)}, expected a JSON object")
    for key in _REQUIRED:
        if key not in meta:
            raise PredictionsFileError(where, f"metadata has no {key!r}")
    for key, types in _METADATA_TYPES.items():
        if key in meta and (not isinstance(meta[key], types) or isinstance(meta[key], bool)):
            expected = " or ".join(dict.fromkeys(_json_type(None if t is type(None) else t()) for t in types))
            raise PredictionsFileError(
                where, f"metadata {key!r} is {_json_type(meta[key])}, expected {expected}"
            )
    for key in ("classes", "class_names"):
        if isinstance(meta.get(key), list) and not all(isinstance(c, str) for c in meta[key]):
            raise PredictionsFileError(where, f"metadata {key!r} holds entries that are not strings")
    if meta.get("class_names") is not None and len(meta["class_names"]) != len(meta["classes"]):
        raise PredictionsFileError(
            where, f"metadata has {len(meta['class_names'])} class_names for {len(meta['classes'])} classes"
        )
    for key in ("name", "split"):
        if not isinstance(meta["dataset"].get(key), str):
            raise PredictionsFileError(where, f"metadata 'dataset' needs a string {key!r}")


def check_predictions(pred: Predictions, where: str | os.PathLike = "predictions") -> None:
    """Raises PredictionsFileError unless the arrays and metadata agree with each other."""
    meta = pred.metadata
    check_metadata(meta, where)
    num, num_classes = len(pred.ids), len(meta["classes"])
    if pred.probs.ndim != 2 or pred.probs.shape != (num, num_classes):
        raise PredictionsFileError(
            where, f"probs has shape {pred.probs.shape}, expected ({num} images, {num_classes} classes)"
        )
    if pred.labels.shape != (num,):
        raise PredictionsFileError(where, f"labels has shape {pred.labels.shape}, expected ({num},)")
    if meta.get("num_images", num) != num:
        raise PredictionsFileError(where, f"partial file: {num} images, metadata says {meta['num_images']}")
    if num and (pred.labels.min() < 0 or pred.labels.max() >= num_classes):
        raise PredictionsFileError(where, f"labels outside [0, {num_classes})")
    if len(set(pred.ids.tolist())) != num:
        raise PredictionsFileError(where, "duplicate image ids")
    if not np.isfinite(pred.probs).all():
        raise PredictionsFileError(where, "probs contain NaN or infinity")
    if num and pred.probs.min() < 0:
        raise PredictionsFileError(where, f"probs contain negative values (smallest {pred.probs.min():.4g})")
    tolerance = _SUM_TOLERANCE.get(pred.probs.dtype, 1e-4)
    sums = pred.probs.sum(axis=1, dtype=np.float64)
    if num and np.abs(sums - 1.0).max() > tolerance:
        raise PredictionsFileError(
            where, f"probabilities do not sum to 1 (worst row sums to {sums.max():.4f})"
        )


def save_predictions(path: str | os.PathLike, pred: Predictions) -> Path:
    """Checks, then writes atomically (a temp file in the same folder, renamed), so no reader sees half a file."""
    path = Path(path)
    atomic_write(path, predictions_writer(path, pred))
    return path


def predictions_writer(path: str | os.PathLike, pred: Predictions) -> Callable[[BinaryIO], None]:
    """Checks `pred` and returns what writes it as a predictions file into an open handle (for atomic writers
    that put several files in place together)."""
    pred = Predictions(
        ids=np.asarray(pred.ids, dtype=str),
        labels=np.asarray(pred.labels, dtype=np.int64),
        probs=np.asarray(pred.probs),
        metadata={**pred.metadata, "format_version": FORMAT_VERSION, "num_images": len(pred.ids)},
    )
    check_predictions(pred, path)
    metadata = np.array(json.dumps(pred.metadata, sort_keys=True))
    arrays = {"ids": pred.ids, "labels": pred.labels, "probs": pred.probs, "metadata": metadata}
    return lambda handle: np.savez(handle, **arrays)


def load_predictions(path: str | os.PathLike) -> Predictions:
    """Reads and checks a predictions file; a missing, truncated or inconsistent file raises PredictionsFileError."""
    path = Path(path)
    if not path.is_file():
        raise PredictionsFileError(path, "no such file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in _ARRAYS if key not in archive.files]
            if missing:
                raise PredictionsFileError(path, f"not a predictions file: no {', '.join(missing)} array")
            arrays = {key: archive[key] for key in _ARRAYS}
        metadata = json.loads(str(arrays["metadata"]))
    except PredictionsFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise PredictionsFileError(path, f"unreadable or truncated ({type(exc).__name__}: {exc})") from exc
    check_metadata(metadata, path)
    if metadata.get("format_version") != FORMAT_VERSION:
        raise PredictionsFileError(
            path, f"format version {metadata.get('format_version')}, expected {FORMAT_VERSION}"
        )
    pred = Predictions(arrays["ids"], arrays["labels"].astype(np.int64), arrays["probs"], metadata)
    check_predictions(pred, path)
    return pred
