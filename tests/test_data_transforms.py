import numpy as np
import pytest
import torch
from helpers.data import write_jpeg
from PIL import Image

from delving.data.config import DataConfig, Normalize
from delving.data.decode import decode_image
from delving.data.normalize import PCA_EIGVAL, PCA_EIGVEC, lighting_offset
from delving.data.transforms import (
    TrainDraws,
    TrainTransform,
    center_crop,
    draw_train_params,
    normalize_tensor,
    reference_crop,
    resize_shorter,
    sample_rng,
    to_model_input,
    train_crop,
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return [
        write_jpeg(folder / "land.JPEG", 500, 375, seed=1),
        write_jpeg(folder / "port.JPEG", 375, 500, seed=2),
        write_jpeg(folder / "big.JPEG", 1600, 1200, seed=3),
    ]


def test_fidelity_against_torchvision_resize_crop_flip(photos):
    """The window resample equals Resize(s) + crop + flip of torchvision within 1 level on average."""
    cfg = DataConfig(use_draft=False)
    worst = 0.0
    for path in photos:
        img = decode_image(path)
        for i in range(8):
            draws = draw_train_params(sample_rng(0, 0, i), cfg)
            ours = np.asarray(train_crop(path, draws, 224, use_draft=False), dtype=np.float64)
            ref = np.asarray(reference_crop(img, draws, 224), dtype=np.float64)
            assert ours.shape == ref.shape == (224, 224, 3)
            worst = max(worst, np.abs(ours - ref).mean())
    assert worst <= 1.0


def test_crop_follows_the_draws(tmp_path):
    """A left-to-right ramp tells where the crop was cut and whether it was flipped."""
    ramp = np.tile(np.arange(256, dtype=np.uint8), (128, 1))
    Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(tmp_path / "ramp.png")
    # 256x128 resized to 128x64: crop column j shows source columns 2j, 2j+1.
    left = TrainDraws(scale=64, crop_x=0.0, crop_y=0.5, flip=False, alpha=(0.0, 0.0, 0.0))
    row = np.asarray(train_crop(tmp_path / "ramp.png", left, 64, False))[32, :, 0].astype(int)
    assert abs(row[0] - 1) <= 1 and abs(row[-1] - 127) <= 1 and np.all(np.diff(row) >= 0)
    right_flipped = TrainDraws(scale=64, crop_x=0.999, crop_y=0.5, flip=True, alpha=(0.0, 0.0, 0.0))
    row = np.asarray(train_crop(tmp_path / "ramp.png", right_flipped, 64, False))[32, :, 0].astype(int)
    assert abs(row[0] - 254) <= 1 and abs(row[-1] - 129) <= 1 and np.all(np.diff(row) <= 0)


def test_draws_are_reproducible_and_in_range():
    cfg = DataConfig()
    draws = [draw_train_params(sample_rng(3, 1, i), cfg) for i in range(400)]
    assert draws[7] == draw_train_params(sample_rng(3, 1, 7), cfg)
    assert draws[7] != draw_train_params(sample_rng(3, 2, 7), cfg)  # another epoch, another draw
    scales = [d.scale for d in draws]
    assert min(scales) >= 256 and max(scales) <= 512 and max(scales) - min(scales) > 200
    assert 0.4 < np.mean([d.flip for d in draws]) < 0.6
    assert np.std([d.alpha[0] for d in draws]) == pytest.approx(0.1, rel=0.15)
    no_flip = DataConfig(flip=False)
    assert not any(draw_train_params(sample_rng(3, 1, i), no_flip).flip for i in range(50))
    assert draw_train_params(sample_rng(3, 1, 7), no_flip).scale == draws[7].scale


def test_pca_constants_and_lighting_offset():
    eigvec = torch.tensor(PCA_EIGVEC, dtype=torch.float64)
    assert torch.allclose(
        eigvec.T @ eigvec, torch.eye(3, dtype=torch.float64), atol=2e-3
    )  # orthonormal columns
    offset = lighting_offset((0.1, 0.0, 0.0))
    expected = torch.tensor([-0.5675, -0.5808, -0.5836]) * 0.1 * PCA_EIGVAL[0] * 255
    assert torch.allclose(offset, expected, atol=1e-4)  # about -1.23 levels on each channel


def test_train_transform_shape_and_range(photos):
    cfg = DataConfig()
    transform = TrainTransform(cfg)
    out = transform(photos[0], transform.draws(sample_rng(0, 0, 0)))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    mean = torch.tensor(cfg.mean).view(3, 1, 1)
    assert (
        out.min() >= -mean.max() - 30 and out.max() <= 255 - mean.min() + 30
    )  # 0-255 minus mean, plus lighting
    again = transform(photos[0], transform.draws(sample_rng(0, 0, 0)))
    assert torch.equal(out, again)


def test_normalize_modes_and_model_input():
    pixels = torch.full((3, 2, 2), 200, dtype=torch.uint8)
    mean_only = normalize_tensor(pixels, DataConfig())
    assert torch.allclose(mean_only[:, 0, 0], torch.tensor([76.325, 83.72, 96.47]))
    with_std = normalize_tensor(pixels.unsqueeze(0).float(), DataConfig(normalize=Normalize.mean_std))
    assert with_std.shape == (1, 3, 2, 2)
    assert torch.allclose(
        with_std[0, :, 0, 0], torch.tensor([76.325 / 58.395, 83.72 / 57.12, 96.47 / 57.375])
    )
    img = Image.new("RGB", (5, 4), (10, 20, 30))
    x = to_model_input(img, DataConfig(mean=[10.0, 20.0, 30.0]))
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32 and x.abs().max() == 0


def test_resize_shorter_and_center_crop(photos):
    img = decode_image(photos[1])
    assert resize_shorter(img, 256).size == (256, 341)
    assert resize_shorter(decode_image(photos[0]), 256).size == (341, 256)
    ours = np.asarray(center_crop(photos[0], 256, 224, use_draft=False), dtype=float)
    resized = resize_shorter(decode_image(photos[0]), 256)
    ref = np.asarray(resized.crop((58, 16, 282, 240)), dtype=float)  # torchvision CenterCrop's rounding
    assert np.abs(ours - ref).mean() <= 1.0
