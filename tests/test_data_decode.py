import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import warm
from helpers.data import make_folder_dataset, write_jpeg
from helpers.runs import REPO, cli_env
from PIL import Image

from delving.data.config import DataConfig, DatasetKind, validate
from delving.data.decode import BadImageError, decode_image, decode_image_with_size
from delving.data.transforms import EvalTransform, TrainDraws, TrainTransform


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGB"])
def test_jpeg_colour_modes_become_rgb(tmp_path, mode):
    path = write_jpeg(tmp_path / "a.JPEG", 48, 32, seed=1, mode=mode)
    img = decode_image(path)
    assert img.mode == "RGB" and img.size == (48, 32)
    if mode == "L":  # gray stays gray after conversion
        arr = np.asarray(img)
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_cmyk_jpeg_keeps_its_colours(tmp_path):
    rgb = write_jpeg(tmp_path / "rgb.JPEG", 64, 48, seed=2)
    cmyk = write_jpeg(tmp_path / "cmyk.JPEG", 64, 48, seed=2, mode="CMYK")
    diff = np.abs(np.asarray(decode_image(rgb), float) - np.asarray(decode_image(cmyk), float)).mean()
    assert diff < 12  # an inverted or misread CMYK would be off by ~100 levels


def test_png_named_jpeg_and_palette_images_are_read(tmp_path):
    png = write_jpeg(tmp_path / "png.JPEG", 30, 20, seed=3, fmt="PNG")
    assert decode_image(png).size == (30, 20)
    palette = Image.new("P", (10, 12))
    palette.putpalette([255, 0, 0] * 256)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "p.png")
    out = decode_image(tmp_path / "p.png")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 0, 0)


def test_bad_files_raise_with_reason(tmp_path):
    good = write_jpeg(tmp_path / "good.JPEG", 64, 64, seed=4)
    data = good.read_bytes()
    (tmp_path / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.JPEG").write_bytes(b"")
    (tmp_path / "text.JPEG").write_bytes(b"this is not an image at all")
    reasons = {}
    for name in ("truncated", "empty", "text", "missing"):
        with pytest.raises(BadImageError) as err:
            decode_image(tmp_path / f"{name}.JPEG")
        assert err.value.path.endswith(f"{name}.JPEG")
        reasons[name] = err.value.reason
    assert "truncated" in reasons["truncated"]
    assert reasons["empty"] == "zero-byte file"
    assert "cannot identify" in reasons["text"]
    assert reasons["missing"] == "file not found"


def test_bytes_sources_are_named_in_errors():
    source = io.BytesIO(b"")
    source.name = "shard-0.tar:0001.jpg"
    with pytest.raises(BadImageError, match=r"shard-0.tar:0001.jpg: zero-byte file"):
        decode_image(source)


def test_draft_never_goes_below_the_requested_shorter_side(tmp_path):
    path = write_jpeg(tmp_path / "big.JPEG", 1001, 757, seed=5)
    for wanted, expected_shorter in ((700, 757), (378, 379), (300, 379), (100, 190), (40, 95)):
        img, full = decode_image_with_size(path, draft_size=wanted)
        assert full == (1001, 757)
        assert min(img.size) == expected_shorter  # 1/1, 1/2, 1/2, 1/4, 1/8 reductions
        assert min(img.size) >= wanted


def _png_16bit(path: Path, values: np.ndarray) -> Path:
    """A real 16-bit PNG (grey, grey+alpha, RGB or RGBA by channel count), written with numpy and zlib."""
    values = np.asarray(values, dtype=">u2")
    height, width = values.shape[:2]
    colour_type = {2: 0, 3: 2}[values.ndim] if values.ndim == 2 or values.shape[2] == 3 else 6
    rows = b"".join(b"\x00" + values[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


def _ramp(width: int = 64, height: int = 48) -> np.ndarray:
    return (np.arange(width * height).reshape(height, width) * (65535 // (width * height - 1))).astype(
        np.uint16
    )


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("byte_order", ["<u2", ">u2"])
def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path, fmt, byte_order):
    ramp = _ramp()
    path = tmp_path / f"grey16.{fmt.lower()}"
    Image.fromarray(ramp.astype(byte_order)).save(path, format=fmt)  # Pillow writes I;16 / I;16B
    assert Image.open(path).mode in ("I;16", "I;16B")
    out = np.asarray(decode_image(path))
    assert out.shape == (48, 64, 3)
    expected = np.rint(ramp / 257.0)
    assert np.abs(out[..., 0].astype(float) - expected).max() <= 1
    assert (out == 255).mean() < 0.01  # clipping made 99.6 % of these pixels 255


def test_16_bit_rgb_and_rgba_pngs_keep_their_levels(tmp_path):
    ramp = _ramp()
    rgb = np.stack([ramp, ramp // 2, ramp // 4], axis=-1)
    for name, values in (("rgb", rgb), ("rgba", np.dstack([rgb, np.full_like(ramp, 65535)]))):
        out = np.asarray(decode_image(_png_16bit(tmp_path / f"{name}16.png", values)), float)
        assert np.abs(out - rgb / 257.0).max() <= 1.5, name


@pytest.mark.parametrize(
    ("values", "full_scale"),
    [
        (np.linspace(0, 1, 64 * 48, dtype=np.float32), 1.0),  # float images in 0..1
        (np.linspace(0, 200, 64 * 48, dtype=np.float32), 255.0),
        (np.linspace(0, 60000, 64 * 48).astype(np.int32), 65535.0),  # 32-bit int holding 16-bit data
        (np.linspace(0, 1_000_000, 64 * 48).astype(np.int32), 1_000_000.0),  # beyond 16 bits: its own max
    ],
)
def test_32_bit_and_float_tiffs_are_scaled_by_their_range(tmp_path, values, full_scale):
    path = tmp_path / "deep.tiff"
    Image.fromarray(values.reshape(48, 64)).save(path, format="TIFF")
    assert Image.open(path).mode in ("I", "F")
    out = np.asarray(decode_image(path))[..., 0].astype(float)
    assert np.abs(out - values.reshape(48, 64) * (255.0 / full_scale)).max() <= 1


@pytest.mark.slow
def test_verify_data_reports_nothing_for_16_bit_images(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", classes=2, train_per_class=2, val_per_class=1)
    Image.fromarray(_ramp(40, 30)).save(root / "train" / "c0" / "grey16.png")
    Image.fromarray(_ramp(40, 30).astype(">u2")).save(root / "train" / "c1" / "grey16.tiff")
    ramp = _ramp(40, 30)
    _png_16bit(root / "val" / "c0" / "rgb16.png", np.stack([ramp] * 3, axis=-1))
    result = warm.run(
        [sys.executable, "-m", "delving.cli.verify_data", "data=folder", f"data.root={root}", "processes=1"],
        env=cli_env(),
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 unreadable image(s)" in result.stdout and "BAD " not in result.stdout


def _oriented_jpeg(path: Path, orientation: int) -> tuple[Path, Image.Image]:
    """A 48x32 JPEG stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view), and the same
    image stored upright without EXIF."""
    upright = Image.open(write_jpeg(path.with_name("upright.JPEG"), 32, 48, seed=7))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what orientation 6 undoes (ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, format="JPEG", quality=95, exif=exif)
    return path, upright


def test_exif_orientation_is_ignored_by_default_and_applied_when_asked(tmp_path):
    path, upright = _oriented_jpeg(tmp_path / "sideways.JPEG", 6)
    img, full = decode_image_with_size(path)
    assert img.size == full == (48, 32)  # as stored, like torchvision
    turned, full = decode_image_with_size(path, exif_transpose=True)
    assert turned.size == full == (32, 48)
    assert np.abs(np.asarray(turned, float) - np.asarray(upright, float)).mean() < 3
    drafted, full = decode_image_with_size(path, draft_size=10, exif_transpose=True)
    assert full == (32, 48) and drafted.size == (16, 24)  # the size the windows are mapped by turns too


def test_exif_transpose_reaches_the_training_and_validation_crops(tmp_path):
    path, _ = _oriented_jpeg(tmp_path / "sideways.JPEG", 6)
    plain = tmp_path / "plain.png"  # the same pixels turned by hand, lossless and without EXIF
    Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_270).save(plain)
    cfg = {"name": DatasetKind.folder, "crop_size": 16, "scale_min": 20, "scale_max": 20, "test_scale": 20}
    turned, stored = DataConfig(**cfg, exif_transpose=True), DataConfig(**cfg)
    assert torch.allclose(EvalTransform(turned)(path), EvalTransform(stored)(plain))
    assert not torch.allclose(EvalTransform(stored)(path), EvalTransform(stored)(plain), atol=4)
    draws = TrainDraws(scale=20, crop_x=0.1, crop_y=0.9, flip=False, alpha=(0.0, 0.0, 0.0))
    assert torch.allclose(TrainTransform(turned)(path, draws), TrainTransform(stored)(plain, draws))
    validate(DataConfig(**cfg, exif_transpose=True, decode_on_device=True))  # every decoder follows the rule
