import io

import numpy as np
import pytest
from helpers.data import write_jpeg
from PIL import Image

from delving.data.decode import BadImageError, decode_image, decode_image_with_size


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
