"""The training input decoded on the training device (`data.decode_on_device=true`).

The workers only read each file and look at its header; the device decodes the JPEGs of a batch in one
`decode_jpeg` call (nvJPEG on a GPU): TorchCodec's where it is installed (the `gpu` extra), else torchvision's,
which torchvision 0.29 deprecates in TorchCodec's favour and applies the paper's transform with the same draws as
the Pillow path (data/transforms.py): resize the shorter side to s, the crop at the same origin, the flip,
8-bit rounding, PCA lighting and the mean. So a GPU needs a fraction of a CPU core per thousand images instead
of several. On device='cpu' the same tensor code runs, which is how the tests compare it with Pillow's path.

EXIF orientation follows data.exif_transpose whatever the decoder: TorchCodec's decode_jpeg always turns a JPEG
by its orientation tag (nvJPEG lists it as a feature), torchvision's only when asked, so no decoder is given
a JPEG that carries one. The worker decodes those files with Pillow, under the same rule as the Pillow path
(data/decode.py), and sends the pixels; JPEGs without the tag (or with orientation 1) go to the device.

Differences from the Pillow path: the whole image is resized (bilinear with antialiasing, as torchvision's
tensor Resize), not only the crop's window, and JPEGs are always decoded at full size (no `draft`); pixels
agree within about a level of 255. Files decode_jpeg does not take (CMYK, a PNG named .JPEG) come decoded by
Pillow from the worker; a JPEG that fails on the device is replaced by another image of its batch (its label
with it) and counted like any unreadable file.
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from delving.data.config import DataConfig
from delving.data.decode import BadImageError, ImageSource, decode_image, exif_orientation, source_name
from delving.data.normalize import InputNormalizer, lighting_offset
from delving.data.transforms import TrainDraws, crop_origin, pil_to_uint8, resized_size

# JPEG modes decode_jpeg reads (to RGB); CMYK/YCCK JPEGs go through Pillow, whose conversion is the reference.
DEVICE_DECODABLE_MODES = ("RGB", "L")

Failure = tuple[str, str]
JpegDecoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


def _torchcodec_decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchcodec.decoders import decode_jpeg

    return decode_jpeg(data, mode="RGB", device=device)


def _torchvision_decode(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    with warnings.catch_warnings():  # its deprecation is why TorchCodec comes first; this is the fallback
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def jpeg_decoders() -> dict[str, JpegDecoder]:
    """The batch JPEG decoders installed here, preferred first: TorchCodec, then torchvision's."""
    decoders: dict[str, JpegDecoder] = {}
    if importlib.util.find_spec("torchcodec") is not None:
        decoders["torchcodec"] = _torchcodec_decode
    decoders["torchvision"] = _torchvision_decode
    return decoders


@dataclass(frozen=True)
class EncodedImage:
    """What a worker sends for one sample: the file's JPEG bytes, or Pillow's decoded pixels (HWC uint8)."""

    name: str
    jpeg: bytes | None
    pixels: np.ndarray | None = None


def read_for_device(source: ImageSource, exif_transpose: bool = False) -> EncodedImage:
    """Worker side: the bytes of a JPEG that decode_jpeg reads the same way on every decoder, else Pillow's
    decode (turned by its EXIF orientation when `exif_transpose`, as the Pillow path does); raises BadImageError."""
    name = source_name(source)
    try:
        if isinstance(source, str | os.PathLike):
            with open(source, "rb") as file:
                raw = file.read()
        else:
            raw = source.read()  # type: ignore[union-attr]
        with Image.open(io.BytesIO(raw)) as img:  # reads the header only
            plain_jpeg = (
                img.format == "JPEG" and img.mode in DEVICE_DECODABLE_MODES and exif_orientation(img) == 1
            )
    except FileNotFoundError:
        raise BadImageError(name, "file not found") from None
    except Exception as exc:
        raise BadImageError(name, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
    if plain_jpeg:
        return EncodedImage(name, raw)
    named = io.BytesIO(raw)
    named.name = name  # type: ignore[attr-defined]
    return EncodedImage(name, None, np.asarray(decode_image(named, exif_transpose=exif_transpose)))


class DeviceTrainTransform:
    """Main-process side: a batch of EncodedImages and their draws -> float32 NCHW on `device`."""

    def __init__(
        self,
        cfg: DataConfig,
        device: torch.device | str,
        normalizer: InputNormalizer | None = None,
        decoder: str | None = None,
    ) -> None:
        self.cfg, self.device = cfg, torch.device(device)
        decoders = jpeg_decoders()
        self.decoder_name = decoder or next(iter(decoders))
        self.decode_jpeg = decoders[self.decoder_name]
        self.normalizer = (normalizer or InputNormalizer.from_config(cfg)).to(self.device)

    def decode(self, images: list[EncodedImage]) -> tuple[list[torch.Tensor | None], list[Failure]]:
        """uint8 CHW on the device for each image (None where it cannot be decoded), and the failures."""
        pixels: list[torch.Tensor | None] = [None] * len(images)
        jpegs = [i for i, image in enumerate(images) if image.jpeg is not None]
        for i, image in enumerate(images):
            if image.pixels is not None:
                pixels[i] = pil_to_uint8(Image.fromarray(image.pixels)).to(self.device, non_blocking=True)
        data = [torch.frombuffer(bytearray(images[i].jpeg or b""), dtype=torch.uint8) for i in jpegs]
        try:
            decoded = self.decode_jpeg(data, self.device) if data else []
            for i, image in zip(jpegs, decoded, strict=True):
                pixels[i] = image
            return pixels, []
        except (RuntimeError, ValueError):  # one bad file fails the whole call: find it one by one
            failures = []
            for i, one in zip(jpegs, data, strict=True):
                try:
                    pixels[i] = self.decode_jpeg([one], self.device)[0]
                except (RuntimeError, ValueError) as error:
                    failures.append(
                        (images[i].name, f"{self.decoder_name} decode_jpeg on {self.device}: {error}")
                    )
            return pixels, failures

    def crop(self, pixels: torch.Tensor, draws: TrainDraws) -> torch.Tensor:
        """Resize the shorter side to s, crop, flip; rounded to 8 bits like the Pillow path's crop (float)."""
        crop_size = self.cfg.crop_size
        out_w, out_h = resized_size(pixels.shape[-1], pixels.shape[-2], draws.scale)
        left, top = crop_origin(draws, out_w, out_h, crop_size)
        resized = F.interpolate(
            pixels[None].float(), size=(out_h, out_w), mode="bilinear", antialias=True, align_corners=False
        )[0]
        window = resized[:, top : top + crop_size, left : left + crop_size].round_().clamp_(0, 255)
        return window.flip(-1) if draws.flip else window

    def __call__(
        self, images: list[EncodedImage], draws: list[TrainDraws], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[Failure]]:
        """(images, labels, failures): an undecodable image is replaced by the batch's next good one."""
        pixels, failures = self.decode(images)
        good = [i for i, p in enumerate(pixels) if p is not None]
        if not good:
            raise BadImageError(images[0].name, f"no image of the batch decoded on {self.device}: {failures}")
        # As the workers do for an unreadable file: the next readable one (here: of the batch) takes its place.
        keep = [
            i if pixels[i] is not None else next((j for j in good if j > i), good[0])
            for i in range(len(pixels))
        ]
        batch = torch.stack([self.crop(pixels[k], draws[k]) for k in keep])  # type: ignore[arg-type]
        # The lighting shift is computed on the CPU in float64 exactly as the Pillow path's, then moved (from
        # pinned memory, so that the normalizer's non-blocking copy does not wait for the GPU).
        shift = torch.stack([lighting_offset(draws[k].alpha) for k in keep])
        if self.device.type == "cuda":
            shift = shift.pin_memory()
        return self.normalizer(batch, shift), labels[keep], failures
