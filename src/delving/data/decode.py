"""One guarded decoder for every reader (train, eval, verify-data), so they agree on what a bad file is."""

from __future__ import annotations

import io
import os
import struct
import time
import warnings
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from delving.errors import UserError

# Test hook (a throttled disk): sleep this many seconds before each image file is read.
READ_DELAY_ENV = "DELVING_READ_DELAY_S"


def read_delay() -> None:
    """Under DELVING_READ_DELAY_S, wait as a slow disk would before a file read (delving-plan's storage test)."""
    delay = float(os.environ.get(READ_DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)


class BadImageError(Exception):
    """A file that cannot be decoded into an RGB image (truncated, empty, not an image...)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class TooManyBadImagesError(UserError, RuntimeError):
    """More unreadable files than `data.max_bad_fraction` allows: the data set is probably broken."""


ImageSource = str | os.PathLike | IO[bytes]  # a path, or an open file / BytesIO (shard members) with a `name`


def source_name(source: ImageSource) -> str:
    if isinstance(source, str | os.PathLike):  # a Path's `name` is only its last part
        return os.fspath(source)  # type: ignore[return-value]
    return str(getattr(source, "name", source))


def decode_image_with_size(
    path: ImageSource, draft_size: int | None = None, exif_transpose: bool = False
) -> tuple[Image.Image, tuple[int, int]]:
    """Decodes to RGB and also returns the file's full (width, height), which `draft` hides.

    With `draft_size`, a JPEG is decoded at the largest 1/2, 1/4 or 1/8 reduction whose shorter side is
    still >= draft_size, so a later downscale to that size never upsamples. With `exif_transpose`, the image
    is turned as its EXIF orientation tag says (and the size with it); without, the pixels are used as stored,
    as torchvision and the paper's Caffe pipeline do.
    """
    if isinstance(path, str | os.PathLike):
        read_delay()
    try:
        # Everything that touches the file is inside this block: Pillow raises many types (OSError for
        # truncation, UnidentifiedImageError, SyntaxError/ValueError/struct errors from plugins), and a
        # colour conversion can fail on a broken palette as late as convert().
        with Image.open(path) as img, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "palette images with transparency", corrupt EXIF
            full_size = img.size
            turn = _exif_turn(img) if exif_transpose else None
            if draft_size is not None and img.format == "JPEG":
                shorter = min(full_size)
                scale = 1
                while scale < 8 and shorter // (scale * 2) >= draft_size:
                    scale *= 2
                if scale > 1:
                    img.draft("RGB", (full_size[0] // scale, full_size[1] // scale))
            img.load()
            img = _scaled_to_8_bits(img)
            if img.mode in ("P", "PA", "LA", "La"):
                img = img.convert("RGBA")
            rgb = img if img.mode == "RGB" else img.convert("RGB")  # loaded already: no copy needed
            if turn is not None:
                rgb = rgb.transpose(turn)
                if turn in _SWAPS_SIDES:
                    full_size = (full_size[1], full_size[0])
        if min(rgb.size) < 1:
            raise BadImageError(source_name(path), f"empty image {rgb.size}")
        return rgb, full_size
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(source_name(path), "file not found") from None
    except Exception as exc:  # any decoder failure makes the file unusable, whatever Pillow calls it
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if _is_empty(path):
            reason = "zero-byte file"
        raise BadImageError(source_name(path), reason) from exc


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_EXIF_ORIENTATION = 0x0112
# The EXIF orientation values and how each is undone (as Pillow's ImageOps.exif_transpose does it).
_EXIF_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE,
                Image.Transpose.ROTATE_90)  # fmt: skip


def exif_orientation(img: Image.Image) -> int | None:
    """The EXIF orientation tag of an opened image: 1 (as stored) when it has none, None when its EXIF block
    is unreadable."""
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        return None
    return orientation if isinstance(orientation, int) else None


def _exif_turn(img: Image.Image) -> Image.Transpose | None:
    """How to turn `img` upright by its EXIF orientation tag; None when it has none, or an unreadable EXIF
    block (the pixels are still good: such a file is used as stored, not dropped)."""
    return _EXIF_TURNS.get(exif_orientation(img))  # type: ignore[arg-type]


def _scaled_to_8_bits(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as 8-bit "L", scaled: convert("RGB") would clip it to 255.

    16-bit modes map 0..65535 onto 0..255. For "I" and "F" the file does not say its range, so it is the
    smallest of 0..1 (floats only), 0..255 and 0..65535 that holds the brightest pixel, else 0..max;
    negative and non-finite values become 0. (16-bit RGB files reach us as 8-bit "RGB" already.)
    """
    if img.mode not in _SIXTEEN_BIT_MODES and img.mode not in ("I", "F"):
        return img
    values = np.asarray(img, dtype=np.float64)
    values = np.where(np.isfinite(values), np.maximum(values, 0.0), 0.0)
    if img.mode in _SIXTEEN_BIT_MODES:
        full_scale = 65535.0
    else:
        peak = float(values.max(initial=0.0))
        ranges = ((1.0,) if img.mode == "F" else ()) + (255.0, 65535.0)
        full_scale = next((r for r in ranges if peak <= r), peak)
    scaled = np.rint(values * (255.0 / full_scale))
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


def _is_empty(source: ImageSource) -> bool:
    if isinstance(source, str | os.PathLike):
        try:  # the error path of a file that may not be reachable at all (a folder without search right)
            return Path(source).is_file() and Path(source).stat().st_size == 0
        except OSError:
            return False
    return isinstance(source, io.BytesIO) and not source.getbuffer().nbytes


def decode_image(
    path: ImageSource, draft_size: int | None = None, exif_transpose: bool = False
) -> Image.Image:
    """Decodes any image Pillow reads (CMYK, grayscale, palette, a PNG named .JPEG) to RGB, or raises BadImageError."""
    return decode_image_with_size(path, draft_size, exif_transpose)[0]
