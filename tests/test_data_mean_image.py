"""data.normalize=mean_image: scripts/compute_mean_image.py stores the training set's mean image beside the
data set, and the transforms subtract it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data import make_folder_dataset, tiny_config

from delving.data.config import DataConfigError
from delving.data.mean_image import compute_mean_image, mean_image_path
from delving.data.readers import open_split
from delving.data.transforms import EvalTransform, TrainTransform, normalize_tensor

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_dataset(tmp_path_factory.mktemp("mean"), classes=2, train_per_class=6, val_per_class=2)


@pytest.fixture(scope="module")
def stored_mean(data_root: Path) -> Path:
    """The script, run as a user would: folder data set, the tiny sizes of tests/helpers/data.py."""
    overrides = [
        "data=folder",
        f"data.root={data_root}",
        "data.crop_size=16",
        "data.scale_min=20",
        "data.scale_max=28",
        "data.test_scale=20",
    ]
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compute_mean_image.py"), *overrides],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "16x16 mean image" in result.stdout
    return data_root / "mean_image.npy"


def test_the_mean_image_is_stored_beside_the_data_set(data_root: Path, stored_mean: Path) -> None:
    cfg = tiny_config(data_root, normalize="mean_image")
    assert mean_image_path(cfg) == stored_mean
    mean = np.load(stored_mean)
    assert mean.shape == (16, 16, 3) and mean.dtype == np.float32
    np.testing.assert_allclose(mean, compute_mean_image(cfg), atol=1e-4)
    assert mean.std(axis=(0, 1)).max() > 1.0  # an image, not a colour


def test_the_training_views_minus_the_mean_image_average_zero_per_pixel(
    data_root: Path, stored_mean: Path
) -> None:
    cfg = tiny_config(data_root, normalize="mean_image")
    reader, _ = open_split(cfg, cfg.train_split)
    views = torch.stack([EvalTransform(cfg)(reader.source(i)) for i in range(len(reader))])
    assert views.shape[1:] == (3, 16, 16)
    assert views.mean(0).abs().max() < 1e-3  # every pixel and channel
    crop = TrainTransform(cfg)(reader.source(0), TrainTransform(cfg).draws(np.random.default_rng(0)))
    assert crop.shape == (3, 16, 16)


def test_an_input_of_another_size_subtracts_the_resized_mean(data_root: Path, stored_mean: Path) -> None:
    cfg = tiny_config(data_root, normalize="mean_image")
    mean = torch.from_numpy(np.load(stored_mean)).permute(2, 0, 1)
    out = normalize_tensor(mean[None].expand(1, 3, 16, 16).clone(), cfg)
    assert out.abs().max() < 1e-4
    assert normalize_tensor(torch.full((3, 24, 32), 128.0), cfg).shape == (3, 24, 32)


def test_a_missing_mean_image_names_the_script(tmp_path: Path) -> None:
    cfg = tiny_config(
        make_folder_dataset(tmp_path, classes=1, train_per_class=1, val_per_class=1), normalize="mean_image"
    )
    with pytest.raises(DataConfigError, match=r"compute_mean_image\.py"):
        EvalTransform(cfg)
