"""data.normalize=mean_image: scripts/compute_mean_image.py stores the training set's mean image beside the
data set, and the transforms subtract it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import warm
from helpers.data import make_folder_dataset, tiny_config
from helpers.runs import REPO, cli_env

from delving.data.config import DataConfigError
from delving.data.mean_image import compute_mean_image, mean_image_path
from delving.data.readers import open_split
from delving.data.transforms import EvalTransform, TrainTransform, normalize_tensor


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
    result = warm.run(
        [sys.executable, str(REPO / "scripts" / "compute_mean_image.py"), *overrides],
        env=cli_env(),
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "16x16 mean image" in result.stdout
    return data_root / "mean_image.npy"


@pytest.mark.slow
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


MEAN_IMAGE_RUN = ["data=folder", "data.crop_size=24", "data.scale_min=28", "data.scale_max=36", "data.test_scale=28",
                  "data.num_workers=0", "data.normalize=mean_image", "train.epochs=1"]  # fmt: skip


@pytest.mark.slow
def test_a_mean_image_model_is_evaluated_and_resumed_only_with_its_own_mean_image(tmp_path: Path) -> None:
    """Two copies of the same images whose mean_image.npy differ: the checkpoint carries the mean image it
    was trained with, and delving-eval and a resume refuse the other one (they scored and trained silently)."""
    from helpers.runs import run_train
    from omegaconf import OmegaConf

    from delving.checkpoint import Checkpoint, CheckpointError
    from delving.data.config import DataConfig, DatasetKind, Normalize
    from delving.evaluation import EvalConfig
    from delving.evaluation.app import run_eval
    from delving.evaluation.config import EvaluateAppConfig, Protocol

    trained_root = make_folder_dataset(
        tmp_path / "a", classes=4, train_per_class=6, val_per_class=2, size=(40, 36)
    )
    mean = np.random.default_rng(0).uniform(90, 140, size=(24, 24, 3)).astype(np.float32)
    np.save(trained_root / "mean_image.npy", mean)
    other_root = tmp_path / "b"
    shutil.copytree(trained_root, other_root)
    np.save(other_root / "mean_image.npy", mean + 20)

    run = tmp_path / "run"
    run_train(run, [*MEAN_IMAGE_RUN, f"data.root={trained_root}"])

    def evaluate_on(root: Path) -> Path:
        data = DataConfig(name=DatasetKind.folder, root=str(root), crop_size=24, test_scale=28, num_workers=0)
        cfg = EvaluateAppConfig(checkpoint=str(run / "last.pt"), data=data, device="cpu",
                                eval=EvalConfig(protocol=Protocol.center), output=str(tmp_path / "p.npz"))  # fmt: skip
        return run_eval(OmegaConf.structured(cfg))

    with pytest.raises(CheckpointError, match=f"{other_root / 'mean_image.npy'} is not the mean image .*last.pt was "
                       "trained with \\(max difference 20 of 255\\)"):  # fmt: skip
        evaluate_on(other_root)
    assert not (tmp_path / "p.npz").exists()
    assert evaluate_on(trained_root) == tmp_path / "p.npz"  # its own mean image: evaluated
    assert DataConfig().normalize == Normalize.mean  # the contract came from the checkpoint, not data=
    carried = Checkpoint.load(run / "last.pt").mean_image
    assert carried is not None and torch.equal(carried, torch.from_numpy(mean).permute(2, 0, 1))

    np.save(trained_root / "mean_image.npy", mean + 0.5)  # recomputed (another subset, another version)
    resumed = run_train(run, [*MEAN_IMAGE_RUN, f"data.root={trained_root}", "train.epochs=2", "resume=auto"],
                        check=False)  # fmt: skip
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert f"{trained_root / 'mean_image.npy'} is not the mean image {run / 'last.pt'} was trained with" in (
        resumed.stderr
    )
    assert "Traceback" not in resumed.stderr
