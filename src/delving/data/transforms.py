"""The paper's input pipeline (§4): scale jitter, random crop, flip, AlexNet PCA lighting, mean subtraction.

Speed: only the crop window is resampled (Pillow's `resize(box=...)` lays the filter on the same grid as
resizing the whole image and cropping; the pixels agree within one level of 255, which the rounding of the
8-bit result moves on up to a quarter of the values of some images) and JPEGs are decoded at a reduced size
with `draft` when the reduced image still covers the drawn scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from delving.data.config import DataConfig
from delving.data.decode import ImageSource, decode_image, decode_image_with_size
from delving.data.normalize import InputNormalizer, lighting_offset


@dataclass(frozen=True)
class TrainDraws:
    """All random choices for one training sample, drawn before decoding (the scale picks the JPEG draft)."""

    scale: int  # shorter side s
    crop_x: float  # in [0, 1): position of the crop in the free horizontal range
    crop_y: float
    flip: bool
    alpha: tuple[float, float, float]  # PCA lighting coefficients


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation: a function of (seed, epoch, index) only, never of the
    worker, the rank or the resume point."""
    return np.random.default_rng((seed, epoch, index))


def draw_train_params(rng: np.random.Generator, cfg: DataConfig) -> TrainDraws:
    # Always the same number of draws in the same order, so switching flip or lighting off changes nothing else.
    scale = int(rng.integers(cfg.scale_min, cfg.scale_max + 1))
    crop_x, crop_y = (float(v) for v in rng.random(2))
    flip = bool(rng.random() < 0.5)
    alpha = rng.normal(0.0, 1.0, 3) * cfg.pca_lighting_std
    return TrainDraws(
        scale, crop_x, crop_y, flip and cfg.flip, (float(alpha[0]), float(alpha[1]), float(alpha[2]))
    )


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to `shorter`, rounded as torchvision's Resize(int) does."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def resize_shorter(img: Image.Image, shorter: int) -> Image.Image:
    """The test-side resize: the whole image, shorter side = `shorter`, bilinear with antialiasing (as torchvision)."""
    size = resized_size(img.width, img.height, shorter)
    return img if size == img.size else img.resize(size, Image.Resampling.BILINEAR)


def _window(
    img: Image.Image, full_size: tuple[int, int], shorter: int, left: int, top: int, crop: int
) -> Image.Image:
    """The crop (left, top, crop, crop) of the image resized to `shorter`, resampling only that window.

    `img` may be a draft-reduced decode of a file of `full_size`; the window is mapped by the actual ratio.
    """
    out_w, out_h = resized_size(*full_size, shorter)
    sx, sy = img.width / out_w, img.height / out_h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return img.resize((crop, crop), Image.Resampling.BILINEAR, box=box)


def crop_origin(draws: TrainDraws, out_w: int, out_h: int, crop_size: int) -> tuple[int, int]:
    """(left, top) of the random crop in the image resized to (out_w, out_h): every position equally likely."""
    left = min(int(draws.crop_x * (out_w - crop_size + 1)), out_w - crop_size)
    top = min(int(draws.crop_y * (out_h - crop_size + 1)), out_h - crop_size)
    return left, top


def train_crop(
    path: ImageSource, draws: TrainDraws, crop_size: int, use_draft: bool, exif: bool = False
) -> Image.Image:
    """Decode, then resize-to-s + crop + flip in one window resample. Raises BadImageError."""
    img, full_size = decode_image_with_size(path, draws.scale if use_draft else None, exif)
    out_w, out_h = resized_size(*full_size, draws.scale)
    left, top = crop_origin(draws, out_w, out_h, crop_size)
    window = _window(img, full_size, draws.scale, left, top, crop_size)
    return window.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if draws.flip else window


def reference_crop(img: Image.Image, draws: TrainDraws, crop_size: int) -> Image.Image:
    """torchvision's Resize(s) + RandomCrop + RandomHorizontalFlip with our draws: the yardstick of the fast path."""
    # Imported here: torchvision imports torch's compiler (2 s), which no training or eval path needs.
    import torchvision.transforms.functional as TF

    resized = TF.resize(img, draws.scale, interpolation=TF.InterpolationMode.BILINEAR)
    left, top = crop_origin(draws, *resized.size, crop_size)
    cropped = TF.crop(resized, top, left, crop_size, crop_size)
    return TF.hflip(cropped) if draws.flip else cropped


def center_origin(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the centre crop, rounded as torchvision's CenterCrop: the one centre view of validation,
    of eval=center and of the ten views."""
    return round((height - size) / 2), round((width - size) / 2)


def center_crop(
    path: ImageSource, shorter: int, crop_size: int, use_draft: bool, exif: bool = False
) -> Image.Image:
    """The validation view, eval=center's view: the whole image resized to shorter side `shorter` (as the
    evaluator resizes it), then the centre crop."""
    resized = resize_shorter(decode_image(path, shorter if use_draft else None, exif), shorter)
    top, left = center_origin(resized.height, resized.width, crop_size)
    return resized.crop((left, top, left + crop_size, top + crop_size))


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 CHW tensor (no scaling: the model sees the 0-255 scale)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()


def normalize_tensor(
    pixels: torch.Tensor, cfg: DataConfig, shift: torch.Tensor | None = None
) -> torch.Tensor:
    """0-255 pixels (uint8 or float, CHW or NCHW) -> float32 model input: + shift (lighting), - mean, [/ std].
    Builds the normalizer on each call: loops hold one `InputNormalizer` instead."""
    return InputNormalizer.from_config(cfg)(pixels, shift)


def to_model_input(img: Image.Image, cfg: DataConfig) -> torch.Tensor:
    """A PIL RGB image (already resized/cropped by the caller) -> float32 CHW model input (one-off use)."""
    return normalize_tensor(pil_to_uint8(img), cfg)


class TrainTransform:
    """The paper's training transform for one file: picklable, holds no random state of its own.

    The loader's workers call `crop` (uint8 CHW; the lighting and the mean run per batch on the device);
    calling the transform gives the per-sample float32 model input, the reference the batched path equals.
    """

    def __init__(self, cfg: DataConfig, normalizer: InputNormalizer | None = None) -> None:
        self.cfg = cfg
        self.normalizer = normalizer or InputNormalizer.from_config(cfg)  # a missing mean image fails here

    def draws(self, rng: np.random.Generator) -> TrainDraws:
        return draw_train_params(rng, self.cfg)

    def crop(self, path: ImageSource, draws: TrainDraws) -> torch.Tensor:
        """Decode, scale, crop and flip: uint8 CHW. Raises BadImageError."""
        return pil_to_uint8(
            train_crop(path, draws, self.cfg.crop_size, self.cfg.use_draft, self.cfg.exif_transpose)
        )

    def __call__(self, path: ImageSource, draws: TrainDraws) -> torch.Tensor:
        return self.normalizer(self.crop(path, draws), lighting_offset(draws.alpha))


class EvalTransform:
    """Center-crop validation view of one file (resize shorter side to test_scale, crop crop_size).

    `crop` gives uint8 CHW (what the loader's workers send); calling it gives the float32 model input.
    """

    def __init__(self, cfg: DataConfig, normalizer: InputNormalizer | None = None) -> None:
        self.cfg = cfg
        self.normalizer = normalizer or InputNormalizer.from_config(cfg)  # a missing mean image fails here

    def crop(self, path: ImageSource) -> torch.Tensor:
        cfg = self.cfg
        return pil_to_uint8(
            center_crop(path, cfg.test_scale, cfg.crop_size, cfg.use_draft, cfg.exif_transpose)
        )

    def __call__(self, path: ImageSource) -> torch.Tensor:
        return self.normalizer(self.crop(path))
