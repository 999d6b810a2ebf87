"""data.decode_on_device: JPEGs decoded by decode_jpeg (TorchCodec's, or torchvision's) and transformed as tensors (on a GPU in
training; here on the CPU, which runs the same code). Checked against the Pillow path on the same draws: the
pixels, and the augmentation read back from the pixels of images that encode their own coordinates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data import make_folder_dataset, tiny_config, write_jpeg
from PIL import Image

from delving.data.config import DataConfig
from delving.data.decode import BadImageError
from delving.data.device_decode import DeviceTrainTransform, jpeg_decoders, read_for_device
from delving.data.loaders import TrainLoader
from delving.data.normalize import PCA_EIGVAL, PCA_EIGVEC
from delving.data.transforms import TrainTransform, draw_train_params, sample_rng

SAMPLES = 96  # draws per statistic: a flip rate off by 0.15 is 3 standard errors away
# The statistics run at half the paper's sizes (a 250x188 image, crops of 112, s in [128, 256]): the same
# arithmetic, a quarter of the pixels to resample on a shared 2-core machine.
HALF = {"crop_size": 112, "scale_min": 128, "scale_max": 256, "test_scale": 128}
W, H = 250, 188


def _both_paths(
    path: Path, cfg: DataConfig, count: int, decoder: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Pillow path, device path) outputs for the draws of samples 0..count-1, each (count, 3, crop, crop)."""
    pil, device = TrainTransform(cfg), DeviceTrainTransform(cfg, "cpu", decoder=decoder)
    draws = [draw_train_params(sample_rng(0, 0, i), cfg) for i in range(count)]
    reference = torch.stack([pil(path, d) for d in draws])
    encoded = [read_for_device(path, cfg.exif_transpose)] * count
    on_device, _, failures = device(encoded, draws, torch.zeros(count, dtype=torch.int64))
    assert not failures
    return reference, on_device


def _coordinate_image(path: Path) -> Path:
    """W x H: red = x (0..255 across), green = y (0..255 down), blue = 128; what a crop shows says where it is."""
    x, y = np.meshgrid(np.linspace(0, 255, W), np.linspace(0, 255, H))
    pixels = np.stack([x, y, np.full_like(x, 128)], axis=-1).round().astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def _geometry(out: torch.Tensor, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Per sample: flipped or not, the shorter side s, and the crop's origin as a fraction of its free range."""
    pixels = (out + torch.tensor(cfg.mean).view(1, 3, 1, 1)).double()
    crop, mid = cfg.crop_size, cfg.crop_size // 2
    red, green = pixels[:, 0, mid - 8 : mid + 8], pixels[:, 1, :, mid - 8 : mid + 8]
    span = crop - 8  # between the centres of the first and the last 8 columns (rows)
    per_px_x = (
        red[:, :, -8:].mean((1, 2)) - red[:, :, :8].mean((1, 2))
    ) / span  # red levels per output pixel
    per_px_y = (green[:, -8:].mean((1, 2)) - green[:, :8].mean((1, 2))) / span
    scale = H * (255 / (H - 1)) / per_px_y  # the source's H rows span 255 levels of green
    flip = (per_px_x < 0).numpy()
    # The crop's left column: the first one, or the last one of a flipped crop.
    left_red = torch.where(per_px_x < 0, red[:, :, -1].mean(1), red[:, :, 0].mean(1))
    left = left_red / (255 / (W - 1)) * scale / H  # in the resized image's pixels
    top = green[:, 0].mean(1) / (255 / (H - 1)) * scale / H
    out_w = (W * scale / H).floor()
    return {
        "flip": flip,
        "scale": scale.numpy(),
        "x": (left / (out_w - crop + 1)).numpy(),
        "y": (top / (scale - crop + 1)).numpy(),
    }


DECODERS = list(jpeg_decoders())  # TorchCodec (where installed) and torchvision's


def test_torchcodec_is_preferred_where_installed() -> None:
    installed = importlib.util.find_spec("torchcodec") is not None
    assert DeviceTrainTransform(DataConfig(), "cpu").decoder_name == (
        "torchcodec" if installed else "torchvision"
    )


def _exif_oriented(path: Path, orientation: int = 6) -> Path:
    """A 500x375 JPEG (as stored) whose EXIF says: turn it 90 degrees clockwise to view (orientation 6)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.open(write_jpeg(path.with_name("plain.JPEG"), 500, 375, seed=11)).save(
        path, format="JPEG", quality=90, exif=exif
    )
    return path


@pytest.mark.slow  # torchcodec's first decode: 1.5-3.7 s
@pytest.mark.parametrize("exif_transpose", [False, True])
@pytest.mark.parametrize("decoder", DECODERS)
def test_same_draws_give_the_pillow_paths_pixels(tmp_path: Path, decoder: str, exif_transpose: bool) -> None:
    """ImageNet-like 500x375 quality-90 JPEGs, a grayscale one, a CMYK one (Pillow decodes it in the worker),
    and one with EXIF orientation 6: turned or not as data.exif_transpose says, whichever decoder (TorchCodec's
    turns any JPEG by its tag, by 26-46 levels of difference on this file; it is never given one)."""
    cfg = DataConfig(exif_transpose=exif_transpose)
    files = [write_jpeg(tmp_path / f"{i}.JPEG", 500, 375, seed=i) for i in range(3)]
    files += [write_jpeg(tmp_path / "gray.JPEG", 500, 375, seed=7, mode="L")]
    files += [write_jpeg(tmp_path / "cmyk.JPEG", 375, 500, seed=8, mode="CMYK")]
    files += [_exif_oriented(tmp_path / "exif6.JPEG")]
    assert read_for_device(files[-2]).jpeg is None and read_for_device(files[0]).jpeg is not None
    oriented = read_for_device(files[-1], exif_transpose)
    assert oriented.jpeg is None and oriented.pixels.shape == (
        (500, 375, 3) if exif_transpose else (375, 500, 3)
    )
    for path in files[:1] if exif_transpose else ():  # files without the tag: the same bytes either way
        assert read_for_device(path, exif_transpose).jpeg is not None
    for path in files:
        reference, on_device = _both_paths(path, cfg, 6, decoder)
        per_sample = (reference - on_device).abs().mean((1, 2, 3))
        assert per_sample.max() < 1.0, (path.name, per_sample)  # levels of 255
        assert (reference - on_device.flip(-1)).abs().mean() > 5 * per_sample.mean() + 1  # a flip would show


def test_crop_flip_and_scale_statistics_match_the_pillow_path(tmp_path: Path) -> None:
    cfg = DataConfig(pca_lighting_std=0.0, **HALF)
    reference, on_device = (
        _geometry(out, cfg) for out in _both_paths(_coordinate_image(tmp_path / "xy.JPEG"), cfg, SAMPLES)
    )
    assert (reference["flip"] == on_device["flip"]).all()
    assert 0.35 < on_device["flip"].mean() < 0.65
    assert np.abs(reference["scale"] - on_device["scale"]).max() < 2
    for key in ("x", "y"):  # the origin, as a fraction of the free range: uniform on [0, 1)
        assert np.abs(reference[key] - on_device[key]).max() < 0.02, key
        assert abs(on_device[key].mean() - 0.5) < 0.07 and abs(on_device[key].std() - 0.289) < 0.05, key
    draws = [draw_train_params(sample_rng(0, 0, i), cfg) for i in range(SAMPLES)]
    assert np.abs(on_device["scale"] - [d.scale for d in draws]).max() < 3  # the readout does read s
    # s ~ U{128..256}: mean 192 (standard error 3.8), both ends reached
    assert abs(on_device["scale"].mean() - 192) < 12
    assert on_device["scale"].min() < 140 and on_device["scale"].max() > 244


def test_lighting_noise_matches_the_pillow_path_and_alexnets_covariance(tmp_path: Path) -> None:
    cfg = DataConfig(**HALF)
    Image.new("RGB", (W, H), (128, 128, 128)).save(tmp_path / "gray.JPEG", quality=90)
    reference, on_device = _both_paths(tmp_path / "gray.JPEG", cfg, SAMPLES)
    mean = torch.tensor(cfg.mean).view(1, 3)
    shift_ref = reference.mean((2, 3)) + mean - 128
    shift = on_device.mean((2, 3)) + mean - 128
    torch.testing.assert_close(shift, shift_ref, atol=0.02, rtol=0)
    # Per channel: alpha ~ N(0, 0.1) per eigenvector, so std_c = sqrt(sum_i (v_ci * 0.1 * 255 * lambda_i)^2).
    expected = np.sqrt(((np.array(PCA_EIGVEC) * 0.1 * 255 * np.array(PCA_EIGVAL)) ** 2).sum(1))
    assert expected == pytest.approx([3.17, 3.22, 3.25], abs=0.01)
    assert shift.std(0).numpy() == pytest.approx(expected, rel=0.25)  # 96 samples: a 7 % standard error
    assert abs(shift.mean(0)).max() < 1.0  # zero-mean noise
    assert np.corrcoef(shift.T.numpy())[0, 2] > 0.9  # the first eigenvector moves R, G and B together


@pytest.mark.parametrize("exif_transpose", [False, True])
def test_the_loader_on_the_device_path_gives_the_same_batches(tmp_path: Path, exif_transpose: bool) -> None:
    root = make_folder_dataset(tmp_path, classes=2, train_per_class=6, size=(40, 30))
    write_jpeg(root / "train" / "c0" / "cmyk.JPEG", 40, 30, seed=9, mode="CMYK")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(write_jpeg(tmp_path / "plain.JPEG", 60, 30, seed=12)).save(
        root / "train" / "c0" / "exif6.JPEG", quality=90, exif=exif
    )
    write_jpeg(root / "train" / "c1" / "png.JPEG", 30, 40, seed=10, fmt="PNG")
    (root / "train" / "c1" / "broken.JPEG").write_bytes(
        b"\xff\xd8\xff" + b"\x00" * 20
    )  # a JPEG header, no image
    options = {"max_bad_fraction": 0.5, "exif_transpose": exif_transpose}
    pil = TrainLoader(tiny_config(root, **options), batch_size=7, seed=3)
    device = TrainLoader(tiny_config(root, **options, decode_on_device=True), batch_size=7, seed=3)
    for (a, la), (b, lb) in zip(pil.epoch(1), device.epoch(1), strict=True):
        assert torch.equal(la, lb) and a.shape == b.shape == (7, 3, 16, 16)
        assert (a - b).abs().mean() < 1.5
    assert device.bad_files.skipped == pil.bad_files.skipped == 1


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_jpeg_the_device_cannot_decode_is_replaced_by_the_next_of_its_batch(
    tmp_path: Path, decoder: str
) -> None:
    cfg = DataConfig(**HALF)
    whole = write_jpeg(tmp_path / "whole.JPEG", W, H, seed=1).read_bytes()
    (tmp_path / "cut.JPEG").write_bytes(whole[: len(whole) // 3])  # its header reads; its data ends early
    files = [tmp_path / "whole.JPEG", tmp_path / "cut.JPEG", tmp_path / "whole.JPEG"]
    encoded = [read_for_device(f) for f in files]
    draws = [draw_train_params(sample_rng(0, 0, i), cfg) for i in range(3)]
    device = DeviceTrainTransform(cfg, "cpu", decoder=decoder)
    images, labels, failures = device(encoded, draws, torch.tensor([5, 6, 7]))
    assert images.shape == (3, 3, 112, 112) and labels.tolist() == [5, 7, 7]
    assert [name for name, _ in failures] == [str(tmp_path / "cut.JPEG")]
    torch.testing.assert_close(images[1], images[2])  # the next good image, with its own draws


def test_a_file_that_is_no_image_is_a_bad_image_for_the_worker(tmp_path: Path) -> None:
    (tmp_path / "empty.JPEG").write_bytes(b"")
    with pytest.raises(BadImageError, match=r"empty\.JPEG"):
        read_for_device(tmp_path / "empty.JPEG")


def test_the_docker_image_installs_the_extras_make_install_does() -> None:
    """The same decoder in Docker as in the venv: Dockerfile's requirements command, run on pyproject.toml, lists
    every requirement of the extras `make install` installs (but dev), TorchCodec among them."""
    import re
    import subprocess
    import sys

    import tomllib

    repo = Path(__file__).resolve().parents[1]
    extras = re.search(r"-e '\.\[([a-z,]+)\]'", (repo / "Makefile").read_text()).group(1).split(",")
    command = re.search(r'RUN python -c "(.+?)" \\', (repo / "Dockerfile").read_text()).group(1)
    listed = subprocess.run(
        [sys.executable, "-c", command], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        r for extra in extras if extra != "dev" for r in project["optional-dependencies"][extra]
    ]
    assert "gpu" in extras and any(r.startswith("torchcodec") for r in wanted)
    assert set(wanted) <= set(listed), set(wanted) - set(listed)
