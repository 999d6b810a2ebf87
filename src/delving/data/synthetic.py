"""The embedded default data set: synthetic images in the ImageNet folder layout, generated from a seed.

Each class is one combination of shape x colour x texture x vertical position (top/bottom half, which a
horizontal flip keeps), drawn at a random size, place and angle over a noisy gradient background with
clutter shapes of random kinds and colours, then JPEG-encoded at a random quality. A few files are grayscale
or CMYK JPEGs, as in ImageNet. Generation is deterministic (byte-identical for the same parameters) and safe
when several processes (DDP ranks) ask for it at once.
"""

from __future__ import annotations

import colorsys
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw

from delving.data.config import DataConfig
from delving.errors import UserError
from delving.progress import Progress

log = logging.getLogger("delving")

GENERATOR_VERSION = 1  # bump when the images change, so old caches are not reused
COMPLETE_MARKER = ".complete"
CACHE_ENV = "DELVING_DATA_CACHE"  # where generated data sets live (default ~/.cache/delving)

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")
HUES = {
    "red": 0.0,
    "orange": 0.08,
    "yellow": 0.16,
    "green": 0.33,
    "cyan": 0.5,
    "blue": 0.63,
    "purple": 0.76,
    "pink": 0.9,
}
TEXTURES = ("plain", "striped", "checked")
POSITIONS = ("top", "bottom")
MAX_CLASSES = len(SHAPES) * len(HUES) * len(TEXTURES) * len(POSITIONS)


@dataclass(frozen=True)
class SyntheticClass:
    shape: str
    hue: str
    texture: str
    position: str

    @property
    def name(self) -> str:
        return f"{self.texture} {self.hue} {self.shape} ({self.position})"


@dataclass(frozen=True)
class SyntheticParams:
    classes: int
    train_per_class: int
    val_per_class: int
    min_size: int
    max_size: int
    seed: int

    @classmethod
    def from_config(cls, cfg: DataConfig) -> SyntheticParams:
        return cls(
            cfg.synthetic_classes,
            cfg.synthetic_train_per_class,
            cfg.synthetic_val_per_class,
            cfg.synthetic_min_size,
            cfg.synthetic_max_size,
            cfg.synthetic_seed,
        )

    def as_dict(self) -> dict[str, int]:
        return {**self.__dict__, "generator_version": GENERATOR_VERSION}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


def synthetic_classes(params: SyntheticParams) -> list[SyntheticClass]:
    """The seed picks which combinations are classes; class k is the k-th of them."""
    if not 1 <= params.classes <= MAX_CLASSES:
        raise ValueError(f"data.synthetic_classes must be in [1, {MAX_CLASSES}], got {params.classes}")
    combos = [(s, h, t, p) for s in SHAPES for h in HUES for t in TEXTURES for p in POSITIONS]
    chosen = np.random.default_rng((params.seed, 7)).choice(len(combos), params.classes, replace=False)
    return [SyntheticClass(*combos[i]) for i in sorted(chosen)]


def default_root(params: SyntheticParams) -> Path:
    cache = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "delving"
    return Path(cache).expanduser() / f"synthetic-{params.digest()}"


def _hsv(hue: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val)) * 255.0


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
        pts = [(x * 0.8, y * 0.8) for x, y in corners]
    elif shape == "triangle":
        pts = [(np.cos(a), np.sin(a)) for a in (np.pi / 2 + k * 2 * np.pi / 3 for k in range(3))]
    elif shape == "diamond":
        pts = [(0, 1), (0.6, 0), (0, -1), (-0.6, 0)]
    else:  # cross
        w = 0.33
        pts = [
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
        ]
    c, s = np.cos(angle), np.sin(angle)
    return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float) -> None:
    """Draws the shape's mask with value 255."""
    if shape in ("circle", "ring"):
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        if shape == "ring":
            draw.ellipse((cx - 0.55 * r, cy - 0.55 * r, cx + 0.55 * r, cy + 0.55 * r), fill=0)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, angle), fill=255)


def _texture(texture: str, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A (height, width) brightness pattern in [0.45, 1]."""
    if texture == "plain":
        return np.ones((height, width))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    period = rng.uniform(5.0, 9.0)
    angle = rng.uniform(0, np.pi)
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / period
    if texture == "striped":
        return np.where(np.floor(u) % 2 == 0, 1.0, 0.45)
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / period
    return np.where((np.floor(u) + np.floor(v)) % 2 == 0, 1.0, 0.45)


def render_image(cls: SyntheticClass, params: SyntheticParams, rng: np.random.Generator) -> Image.Image:
    """One RGB image of the class."""
    shorter = int(rng.integers(params.min_size, params.max_size + 1))
    longer = int(shorter * rng.uniform(1.0, 1.6))
    width, height = (longer, shorter) if rng.random() < 0.7 else (shorter, longer)

    # Background: a smooth random colour field (a 3x3 grid upsampled) of low saturation.
    grid = rng.uniform(40, 215, (3, 3, 3)).astype(np.uint8)
    canvas = np.asarray(
        Image.fromarray(grid).resize((width, height), Image.Resampling.BILINEAR), dtype=np.float64
    )

    def paste(mask: Image.Image, colour: np.ndarray, pattern: np.ndarray | None = None) -> None:
        bbox = mask.getbbox()  # blend only where the shape is: most of the time goes here
        if bbox is None:
            return
        x0, y0, x1, y1 = bbox
        alpha = np.asarray(mask.crop(bbox), dtype=np.float64)[..., None] / 255.0
        fill = colour if pattern is None else colour * pattern[y0:y1, x0:x1, None]
        region = canvas[y0:y1, x0:x1]
        region += (fill - region) * alpha

    # Clutter: small shapes of any kind and colour, some behind and some in front of the object.
    n_clutter = int(rng.integers(2, 6))
    behind = int(rng.integers(0, n_clutter + 1))
    clutter = []
    for _ in range(n_clutter):
        mask = Image.new("L", (width, height), 0)
        r = rng.uniform(0.05, 0.13) * shorter
        _draw_shape(
            ImageDraw.Draw(mask),
            SHAPES[rng.integers(len(SHAPES))],
            *rng.uniform(0, 1, 2) * (width, height),
            r,
            rng.uniform(0, 2 * np.pi),
        )
        clutter.append((mask, _hsv(rng.random(), rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))))
    for mask, colour in clutter[:behind]:
        paste(mask, colour)

    # The object: its shape, hue, texture and half (top or bottom) are the class.
    r = rng.uniform(0.18, 0.3) * shorter
    cx = rng.uniform(r, width - r)
    half = height / 2
    cy = rng.uniform(max(r * 0.7, half * 0.25), half * 0.8) + (half if cls.position == "bottom" else 0.0)
    mask = Image.new("L", (width, height), 0)
    _draw_shape(ImageDraw.Draw(mask), cls.shape, cx, cy, r, rng.uniform(0, 2 * np.pi))
    colour = _hsv(HUES[cls.hue] + rng.uniform(-0.03, 0.03), rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
    paste(mask, colour, _texture(cls.texture, width, height, rng))

    for mask, colour in clutter[behind:]:
        paste(mask, colour)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * rng.uniform(4.0, 14.0)
    return Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")


def encode_jpeg(img: Image.Image, rng: np.random.Generator) -> bytes:
    """JPEG bytes at a random quality; about 1 in 60 grayscale and 1 in 60 CMYK, as ImageNet has a few."""
    kind = rng.random()
    if kind < 1 / 60:
        img = img.convert("L")
    elif kind < 2 / 60:
        img = img.convert("CMYK")
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
    return buffer.getvalue()


def generate(params: SyntheticParams, target: Path, show_progress: bool = False) -> None:
    """Writes the whole set under `target` (which must not exist), with the completion marker last."""
    classes = synthetic_classes(params)
    wnids = [f"syn{k:04d}" for k in range(len(classes))]
    total = len(classes) * (params.train_per_class + params.val_per_class)
    what = "synthetic data set, generated on first use (later runs reuse it)"
    with Progress(total, what, enabled=show_progress) as progress:
        for split_code, (split, per_class) in enumerate(
            (("train", params.train_per_class), ("val", params.val_per_class))
        ):
            for k, (wnid, cls) in enumerate(zip(wnids, classes, strict=True)):
                folder = target / split / wnid
                folder.mkdir(parents=True)
                for i in range(per_class):
                    rng = np.random.default_rng((params.seed, split_code, k, i))
                    data = encode_jpeg(render_image(cls, params, rng), rng)
                    (folder / f"{wnid}_{split}_{i:05d}.JPEG").write_bytes(data)
                progress.update(per_class)
    names = "".join(f"{wnid} {cls.name}\n" for wnid, cls in zip(wnids, classes, strict=True))
    (target / "classes.txt").write_text(names, encoding="utf-8")
    (target / COMPLETE_MARKER).write_text(
        json.dumps(params.as_dict(), sort_keys=True) + "\n", encoding="utf-8"
    )


def estimated_bytes(params: SyntheticParams, block: int, samples: int = 8) -> int:
    """About the disk space the set takes in blocks of `block` bytes (within 15% on 4 KiB blocks): the bytes
    per pixel of a few rendered images times the mean image area, each file rounded to blocks on average,
    and a block per folder."""
    classes = synthetic_classes(params)
    per_pixel = []
    for i in range(samples):
        rng = np.random.default_rng((params.seed, 0, i % len(classes), i // len(classes)))
        image = render_image(classes[i % len(classes)], params, rng)
        per_pixel.append(len(encode_jpeg(image, rng)) / (image.width * image.height))
    low, high = params.min_size, params.max_size
    mean_area = (
        (low * low + low * high + high * high) / 3 * 1.3
    )  # shorter side uniform, longer 1-1.6 times it
    per_image = block * max(1.0, float(np.mean(per_pixel)) * mean_area / block + 0.5)
    images = params.classes * (params.train_per_class + params.val_per_class)
    return int(images * per_image) + (2 * params.classes + 4) * block


class SyntheticSpaceError(UserError):
    """No room for the synthetic set where it is generated; nothing of it is left there."""


def ensure_synthetic(cfg: DataConfig) -> Path:
    """The synthetic set's root, generated on first use.

    Under a file lock, into a temporary sibling folder renamed into place when complete: a crash leaves only
    a temporary folder (removed by the next caller), never a half-written set at the root.
    """
    params = SyntheticParams.from_config(cfg)
    root = Path(cfg.root).expanduser() if cfg.root else default_root(params)
    marker = root / COMPLETE_MARKER
    if marker.is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if marker.is_file():
            return root  # another process generated it while we waited
        if root.exists():
            raise FileExistsError(
                f"{root} exists but is not a complete synthetic data set (no {COMPLETE_MARKER}); "
                f"remove it or point data.root elsewhere"
            )
        for stale in root.parent.glob(f".{root.name}.tmp-*"):  # left by a process killed while generating
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            log.info("generating the synthetic data set into %s (once: later runs reuse it)", root)
            generate(params, tmp / "set", show_progress=True)
            os.replace(tmp / "set", root)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise SyntheticSpaceError(
                f"the disk at {root.parent} is full (or over quota): the synthetic data set did not fit and was "
                f"not kept; free some space there, or set {CACHE_ENV} (or data.root=) to a folder with room"
            ) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root
