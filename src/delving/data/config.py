"""The data config schema (Hydra ConfigStore node `data/base_data`): types and allowed values are checked on compose."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf

from delving import paper
from delving.errors import UserError

# The paper's mean RGB and the usual ImageNet std on the 0-255 scale, as the config's lists.
IMAGENET_MEAN_RGB = list(paper.PAPER_MEAN_RGB)
IMAGENET_STD_RGB = list(paper.IMAGENET_STD_RGB)


class DatasetKind(str, Enum):
    synthetic = "synthetic"
    imagenet = "imagenet"
    folder = "folder"
    shards = "shards"
    wds = "wds"  # WebDataset shards as the hub publishes them (timm/imagenet-1k-wds), read in place
    parquet = "parquet"  # parquet files in the hub's ImageNet-1k schema, read in place


class Normalize(str, Enum):
    # Subtract the mean RGB on the 0-255 scale, no std division (the paper's input, ~[-128, 128]).
    mean = "mean"
    mean_std = "mean_std"  # also divide by the std (unit variance input)
    # Subtract the training set's mean image (scripts/compute_mean_image.py writes <root>/mean_image.npy).
    mean_image = "mean_image"


class DataConfigError(UserError, ValueError):
    """A data.* value that cannot work; the message names the key."""


@dataclass
class DataConfig:
    name: DatasetKind = DatasetKind.synthetic
    root: str | None = None  # synthetic: None = a cache folder keyed by the generation parameters
    train_split: str = "train"
    val_split: str = "val"
    # Optional "<wnid> <name>" lines; None: look in the root (reports only).
    class_names_file: str | None = None

    # The paper's training input: shorter side s ~ U[scale_min, scale_max] (integers), a random crop, a flip.
    crop_size: int = 224
    scale_min: int = 256
    scale_max: int = 512
    test_scale: int = 256  # shorter side for the trainer's center-crop validation
    flip: bool = True
    pca_lighting_std: float = 0.1  # AlexNet's colour noise; 0 turns it off
    normalize: Normalize = Normalize.mean
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN_RGB))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD_RGB))
    mean_image: str | None = None  # normalize=mean_image: the .npy file; None: <root>/mean_image.npy
    use_draft: bool = True  # Pillow's reduced-size JPEG decoding when the reduced image still covers s
    # Turn images upright by their EXIF orientation tag. false: pixels as stored (torchvision, the paper's Caffe).
    # Every path follows it: Pillow's, decode_on_device's (whichever decoder) and evaluation.
    exif_transpose: bool = False
    # Training input only: the workers send the JPEG bytes and the training device decodes them (nvJPEG on a
    # GPU, via torchvision.io.decode_jpeg) and crops, flips and lights them there (data/device_decode.py).
    # false: Pillow in the workers (the reference path). Files decode_jpeg cannot read are decoded by Pillow.
    decode_on_device: bool = False

    num_workers: int = 4  # per rank
    prefetch_factor: int = 2  # batches per worker in flight
    max_bad_fraction: float = 0.001  # stop when skipped unreadable files pass this fraction of samples read

    # data=synthetic: generated on first use from these (a different value gives a different cache folder).
    synthetic_classes: int = 100
    synthetic_train_per_class: int = 80
    synthetic_val_per_class: int = 20
    synthetic_min_size: int = 64  # shorter side range of the generated images
    synthetic_max_size: int = 112
    synthetic_seed: int = 0

    # data=shards: WebDataset tars written by scripts/make_shards.py; `root` holds <split>-NNNNNN.tar + <split>.json.


def validate(cfg: DataConfig) -> None:
    """Checks what the types cannot: consistent sizes (a wrong crop would fail deep inside a worker)."""
    if not 0 < cfg.crop_size <= cfg.scale_min <= cfg.scale_max:
        raise DataConfigError(
            f"data: need 0 < crop_size <= scale_min <= scale_max, got "
            f"crop_size={cfg.crop_size}, scale_min={cfg.scale_min}, scale_max={cfg.scale_max}"
        )
    if cfg.test_scale < cfg.crop_size:
        raise DataConfigError(f"data: test_scale={cfg.test_scale} is smaller than crop_size={cfg.crop_size}")
    if len(cfg.mean) != 3 or len(cfg.std) != 3:
        raise DataConfigError(
            f"data: mean and std need 3 values (RGB), got {list(cfg.mean)} and {list(cfg.std)}"
        )
    if not 0.0 <= cfg.max_bad_fraction < 1.0:
        raise DataConfigError(f"data: max_bad_fraction must be in [0, 1), got {cfg.max_bad_fraction}")


def as_data_config(cfg: DataConfig | DictConfig | dict[str, Any]) -> DataConfig:
    """The dataclass from Hydra's DictConfig (typed or not): checked types, and plain attribute access in the
    per-sample code (a DictConfig lookup costs microseconds). Call it once, where a config enters the data
    room (the loaders' constructors); everything below them takes a DataConfig."""
    if isinstance(cfg, DataConfig):
        return cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), cfg))
