"""Builders of tiny data sets for the data tests (no tests here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from delving.data.config import DataConfig, DatasetKind


def write_jpeg(path: Path, width: int, height: int, seed: int, mode: str = "RGB", fmt: str = "JPEG") -> Path:
    """A smooth random image (a coarse grid upsampled), so resampling differences are realistic."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    img = Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def make_folder_dataset(
    root: Path,
    classes: int = 3,
    train_per_class: int = 10,
    val_per_class: int = 4,
    size: tuple[int, int] = (40, 30),
) -> Path:
    """root/{train,val}/c<k>/<i>.JPEG with sizes varying around `size`."""
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for k in range(classes):
            for i in range(per_class):
                w, h = size[0] + (i % 3) * 4, size[1] + (i % 2) * 6
                if i % 4 == 1:
                    w, h = h, w  # some portrait images
                write_jpeg(
                    root / split / f"c{k}" / f"{i:03d}.JPEG",
                    w,
                    h,
                    seed=(split == "val") * 100_000 + k * 1000 + i,
                )
    return root


def tiny_config(root: Path, **overrides) -> DataConfig:
    """Small crops for tiny images; no workers unless asked."""
    values = {
        "name": DatasetKind.folder,
        "root": str(root),
        "crop_size": 16,
        "scale_min": 20,
        "scale_max": 28,
        "test_scale": 20,
        "num_workers": 0,
    }
    values.update(overrides)
    return DataConfig(**values)
