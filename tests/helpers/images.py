"""Tiny JPEG folder data sets (root/split/class_k/img_i.JPEG) written on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_folder_data(root: Path, classes: int, train_per_class: int, val_per_class: int) -> Path:
    """Random 40x36 JPEGs: enough for the tiny settings (crop 24, scales 28-36)."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i}.JPEG", quality=90)
    return root
