"""The training set's mean image (data.normalize=mean_image): "per-pixel mean subtracted" read as a mean
image, the alternative to the mean colour (data.normalize=mean, the recipes' default).

The mean is taken over the training images' validation views (shorter side data.test_scale, the centre
crop_size window, full-size decode), so it has the crop's size; scripts/compute_mean_image.py writes it to
<data root>/mean_image.npy (H x W x 3, RGB, float32 on the 0-255 scale). An input of another size (a
training crop is the same size; a dense test image is not) subtracts the mean image resized to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from delving.data.config import DataConfig, DataConfigError

MEAN_IMAGE_FILE = "mean_image.npy"


def mean_image_path(cfg: DataConfig) -> Path:
    """data.mean_image when given, else <data root>/mean_image.npy (beside the data set)."""
    if cfg.mean_image:
        return Path(cfg.mean_image).expanduser()
    from delving.data.datasets import resolve_root

    return resolve_root(cfg) / MEAN_IMAGE_FILE


def compute_mean_image(cfg: DataConfig, limit: int | None = None) -> np.ndarray:
    """The mean (H, W, 3) float32 of the training split's centre views, in data set order (first `limit`)."""
    from delving.data.loaders import open_split
    from delving.data.transforms import center_crop

    reader, _ = open_split(cfg, cfg.train_split)
    count = len(reader) if limit is None else min(limit, len(reader))
    if count == 0:
        raise DataConfigError(f"split {cfg.train_split!r} has no images to average")
    total = np.zeros((cfg.crop_size, cfg.crop_size, 3), dtype=np.float64)
    for i in range(count):
        total += np.asarray(
            center_crop(reader.source(i), cfg.test_scale, cfg.crop_size, False), dtype=np.float64
        )
    return (total / count).astype(np.float32)


def load_mean_image(cfg: DataConfig) -> torch.Tensor:
    """The stored mean image as a (3, H, W) float32 tensor."""
    path = mean_image_path(cfg)
    if not path.is_file():
        raise DataConfigError(
            f"data.normalize=mean_image needs {path}: run scripts/compute_mean_image.py with the same data config"
        )
    mean = np.load(path)
    if mean.ndim != 3 or mean.shape[2] != 3:
        raise DataConfigError(f"{path}: need an H x W x 3 array, got shape {mean.shape}")
    return torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32)).permute(2, 0, 1).contiguous()


def fit_mean(mean: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A (3, h, w) mean for an input of (height, width): as it is when the sizes agree (or it is a colour,
    h = w = 1), else bilinearly resized."""
    if mean.shape[-2:] in ((1, 1), (height, width)):
        return mean
    return F.interpolate(mean[None], size=(height, width), mode="bilinear", align_corners=False)[0]
