"""Computing the training set's mean image offline (data.normalize=mean_image): "per-pixel mean subtracted" read
as a mean image, the alternative to the mean colour (data.normalize=mean, the recipes' default).

The mean is taken over the training images' validation views (shorter side data.test_scale, the centre
crop_size window, full-size decode), so it has the crop's size; scripts/compute_mean_image.py writes it to
<data root>/mean_image.npy. Subtracting it is data/normalize.py's job.
"""

from __future__ import annotations

import numpy as np

from delving.data.config import DataConfig, DataConfigError
from delving.data.normalize import mean_image_path
from delving.data.readers import open_split
from delving.data.transforms import center_crop

__all__ = ["compute_mean_image", "mean_image_path"]


def compute_mean_image(cfg: DataConfig, limit: int | None = None) -> np.ndarray:
    """The mean (H, W, 3) float32 of the training split's centre views, in data set order (first `limit`)."""
    reader, _ = open_split(cfg, cfg.train_split)
    count = len(reader) if limit is None else min(limit, len(reader))
    if count == 0:
        raise DataConfigError(f"split {cfg.train_split!r} has no images to average")
    total = np.zeros((cfg.crop_size, cfg.crop_size, 3), dtype=np.float64)
    for i in range(count):
        total += np.asarray(
            center_crop(reader.source(i), cfg.test_scale, cfg.crop_size, False, cfg.exif_transpose),
            dtype=np.float64,
        )
    return (total / count).astype(np.float32)
