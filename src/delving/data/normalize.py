"""The model input from 0-255 pixels: AlexNet's PCA lighting, the mean (a colour or the training set's mean
image) and the optional std, in one `InputNormalizer` built once per process from the data config (which the
evaluator fills from the checkpoint's contract).

Training and validation workers send uint8 crops; the normalizer runs once per batch on the training device
(a quarter of float32's bytes through shared memory, pinning and the host-to-device copy, as timm's prefetcher
does). The result is the per-sample path's to the bit: the same float32 operations in the same order.

The mean image (data.normalize=mean_image) is <data root>/mean_image.npy (H x W x 3, RGB, float32, 0-255),
written by scripts/compute_mean_image.py; an input of another size subtracts it resized (bilinear).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from delving.data.config import DataConfig, DataConfigError, Normalize

MEAN_IMAGE_FILE = "mean_image.npy"

# AlexNet's colour noise [16] adds sum_i alpha_i * lambda_i * p_i, alpha_i ~ N(0, 0.1), with the eigenvalues
# lambda_i and eigenvectors p_i of ImageNet's 3x3 RGB pixel covariance. AlexNet never published its numbers; these
# are fb.resnet.torch's estimate (facebookarchive/fb.resnet.torch, datasets/imagenet.lua, for pixels in [0, 1]),
# the constants Caffe/Torch/PyTorch reimplementations use. Eigenvalues are x255 below since our pixels are 0-255.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (  # columns are the eigenvectors, rows are R, G, B
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


_EIGVEC = np.array(PCA_EIGVEC, dtype=np.float64)
_EIGVAL_255 = np.array(PCA_EIGVAL, dtype=np.float64) * 255.0


def lighting_offset(alpha: tuple[float, float, float]) -> torch.Tensor:
    """Per-channel RGB shift (3,) of AlexNet's PCA lighting on the 0-255 scale, computed in float64 on the CPU
    and rounded to float32: the same numbers whichever process or device adds them. (numpy: a fifth of the
    time of the same product in torch, equal on 20,000 random draws.)"""
    return torch.from_numpy(
        (_EIGVEC @ (np.asarray(alpha, dtype=np.float64) * _EIGVAL_255)).astype(np.float32)
    )


def mean_image_path(cfg: DataConfig) -> Path:
    """data.mean_image when given, else <data root>/mean_image.npy (beside the data set)."""
    if cfg.mean_image:
        return Path(cfg.mean_image).expanduser()
    from delving.data.datasets import resolve_root

    return resolve_root(cfg) / MEAN_IMAGE_FILE


def load_mean_image(cfg: DataConfig) -> torch.Tensor:
    """The stored mean image as a (3, H, W) float32 tensor."""
    path = mean_image_path(cfg)
    if not path.is_file():
        raise DataConfigError(
            f"data.normalize=mean_image needs {path}: run scripts/compute_mean_image.py with the same data config"
        )
    mean = np.load(path)
    if mean.ndim != 3 or mean.shape[2] != 3:
        raise DataConfigError(f"{path}: need an H x W x 3 array, got shape {mean.shape}")
    return torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32)).permute(2, 0, 1).contiguous()


def fit_mean(mean: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A (3, h, w) mean for an input of (height, width): as it is when the sizes agree (or it is a colour,
    h = w = 1), else bilinearly resized."""
    if mean.shape[-2:] in ((1, 1), (height, width)):
        return mean
    return F.interpolate(mean[None], size=(height, width), mode="bilinear", align_corners=False)[0]


class InputNormalizer:
    """0-255 pixels (uint8 or float; CHW or NCHW) -> float32 model input: + lighting shift, - mean, [/ std].

    Holds the mean (colour (3, 1, 1) or image (3, H, W)) and std on one device; a loader moves them once, with
    `to(device)`.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor | None) -> None:
        self.mean, self.std = mean, std

    @classmethod
    def from_config(cls, cfg: DataConfig) -> InputNormalizer:
        """The data config's normalisation; data.normalize=mean_image reads mean_image.npy here, once."""
        if cfg.normalize == Normalize.mean_image:
            return cls(load_mean_image(cfg), None)
        mean = torch.tensor(list(cfg.mean), dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(list(cfg.std), dtype=torch.float32).view(3, 1, 1)
        return cls(mean, std if cfg.normalize == Normalize.mean_std else None)

    def to(self, device: torch.device | str) -> InputNormalizer:
        """The same normalisation with its tensors on `device` (itself when they are there already)."""
        device = torch.device(device)
        if self.mean.device == device:
            return self
        return InputNormalizer(self.mean.to(device), None if self.std is None else self.std.to(device))

    def __call__(self, pixels: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """`shift`: the lighting offset, (3,) for a CHW input or (N, 3) for an NCHW batch, or None."""
        # Every copy to the device is non-blocking: a blocking one from the loader's pinned memory would wait
        # for the GPU's queued work (the previous step) before each batch.
        device = pixels.device
        mean = fit_mean(self.mean, *pixels.shape[-2:]).to(device, non_blocking=True)
        if shift is None:
            offset = -mean
        elif shift.ndim == 2:
            offset = shift.to(device, non_blocking=True)[:, :, None, None] - mean
        else:
            offset = shift.to(device, non_blocking=True).view(3, 1, 1) - mean
        out = pixels.to(torch.float32) + offset
        return out if self.std is None else out / self.std.to(device, non_blocking=True)
