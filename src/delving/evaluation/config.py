"""The eval config schema (Hydra ConfigStore node `eval/base_eval`): types and allowed values are checked on compose."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from delving.data.config import DataConfig
from delving.errors import ConfigError
from delving.paper import PAPER_INPUT_SIZE as PAPER_CROP
from delving.paths import PathsConfig


class Protocol(str, Enum):
    center = "center"  # shorter side s, one centre crop of the training size
    ten_view = "ten_view"  # AlexNet's 4 corners + centre (and their flips) at each scale
    dense = "dense"  # the paper's multi-view test on feature maps: every window of the last map, stride 1
    multiscale = "multiscale"  # `dense` at several scales, averaged (Tables 4 and 6)


class ProbsDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"  # half the file size; ties in top-k can then differ from the printed errors


@dataclass
class EvalConfig:
    protocol: Protocol = Protocol.dense
    # Shorter sides in the paper's pixels (for a 224 crop); multiplied by model.input_size / 224.
    scales: list[int] = field(default_factory=lambda: [256])
    flips: bool = True  # also run the horizontally flipped views and average them in
    # Pillow's reduced-size JPEG decoding (as data.use_draft in training). Off: the tables' numbers come from
    # full-size decodes (a draft decode differs by 1.66 levels on average, up to 18, on a 1000x750 JPEG at 256).
    draft: bool = False
    batch_size: int = 32  # images (dense) or crops (center, ten_view) per forward, per rank
    num_workers: int | None = None  # decoding processes per rank; None: data.num_workers
    max_pending_views: int = 256  # views (whole images for dense) waiting in half-full shape buckets
    amp: bool = False  # bfloat16 autocast on CUDA (softmax stays fp32); off: float32 math, as `tf32` says
    # float32 convolutions and matmuls on CUDA in TF32 (Ampere and later: 10-bit mantissa, tensor cores) or, with
    # false, in IEEE fp32 (slower, more memory: lower batch_size). CPUs always compute IEEE fp32 (delving/numerics.py).
    tf32: bool = True
    probs_dtype: ProbsDtype = ProbsDtype.float32  # how the predictions file stores the probabilities
    limit: int | None = None  # evaluate only the first N images of the split (smoke runs)


def effective_scales(scales: list[int], input_size: int) -> list[int]:
    """Shorter sides in this model's pixels: the paper's 256/384/480 for a 224 crop, scaled to `input_size`."""
    if not scales:
        raise ValueError("eval.scales is empty: give at least one test scale, e.g. eval.scales=[256]")
    if any(s <= 0 for s in scales):
        raise ValueError(
            "scales are shorter sides in the paper's pixels and must be positive: e.g. eval.scales=[256] or "
            "[256,384,480]"
        )
    resolved = [round(s * input_size / PAPER_CROP) for s in scales]
    too_small = [s for s, r in zip(scales, resolved, strict=True) if r < input_size]
    if too_small:
        raise ValueError(
            f"eval.scales {too_small} are smaller than the paper's crop {PAPER_CROP}: the resized image would "
            f"not hold one {input_size}x{input_size} view of this model (scales are in paper pixels)"
        )
    return resolved


def check_eval(ev: EvalConfig, input_size: int) -> None:
    """Refuses eval values that cannot work, in one line naming the key (delving-train's preflight and
    delving-eval, once it knows the model's input size)."""
    try:
        effective_scales(list(ev.scales), input_size)
    except ValueError as error:
        raise ConfigError(
            f"eval.scales={list(ev.scales)} with model.input_size={input_size}: {error}"
        ) from None
    for key, value, minimum, what in (
        ("eval.batch_size", ev.batch_size, 1, "give 1 or more"),
        ("eval.max_pending_views", ev.max_pending_views, 1, "give 1 or more"),
        ("eval.limit", ev.limit, 1, "evaluate 1 image or more, or null (all)"),
        ("eval.num_workers", ev.num_workers, 0, "give 0 (decode in the main process) or more, or null"),
    ):
        if value is not None and value < minimum:
            raise ConfigError(f"{key}={value}: {what}")


@dataclass
class EvaluateAppConfig:
    """delving-eval (configs/evaluate.yaml). Without `data=`, the data config saved in the checkpoint is used."""

    checkpoint: str = MISSING  # a checkpoint file, or a run directory (its last.pt)
    data: DataConfig | None = None
    # data.KEY=VALUE given without data=: delving-eval passes them here, onto the checkpoint's saved data config.
    data_changes: dict[str, Any] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    split: str = "val"  # val | train (the data config's folders) or any split folder name
    # The predictions file; None: next to the checkpoint, predictions-<protocol>-s<scales>[...].npz
    # (see delving.evaluation.app.default_output).
    output: str | None = None
    device: str = "auto"  # auto: cuda:<local rank> when CUDA is available, else cpu
    dist_timeout_s: int = 1800  # how long a rank waits for the others in a collective


@dataclass
class EnsembleAppConfig:
    """delving-ensemble (configs/ensemble.yaml)."""

    files: list[str] = MISSING  # predictions files of delving-eval or delving-train
    # A label per file; None: the file names without .npz, or their run folders' names where those repeat.
    names: list[str] | None = None
    weights: list[float] | None = None  # None: the plain mean of the probabilities
    select: bool = False  # greedy forward selection on a held-out part of the images
    select_fraction: float = 0.5  # the part used to select; every reported error is on the rest
    seed: int = 0  # which images are held out
    paper_table: str | None = None  # table2 | table4 | table5 | table6 | table7: show the paper's numbers
    baseline: str | None = None  # a predictions file: per-class changes of the ensemble against it
    worst_classes: int = 10
    paths: PathsConfig = field(default_factory=PathsConfig)
    output_dir: str = "outputs/ensemble"  # gets ensemble.md and ensemble.json (and the predictions)
    save_predictions: bool = False  # also write the ensemble's probabilities as ensemble.npz
