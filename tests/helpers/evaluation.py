"""Builders shared by the evaluation and ensemble tests: tiny JPEG folder data sets, checkpoints, configs.

Holds no tests; the test modules import it by name (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from delving.checkpoint import Checkpoint
from delving.data.config import DataConfig, DatasetKind
from delving.evaluation.predictions import Predictions
from delving.models import create_net

TINY_MODEL = {"name": "model_a", "width": 1 / 16, "num_classes": 3, "input_size": 64, "spp_levels": [2, 1]}


def calibrate_logits(model: torch.nn.Module, input_size: int, seed: int = 0) -> torch.nn.Module:
    """Rescale fc3 so logits spread by about 2: the paper's fc3 std of 0.001 gives near-uniform softmaxes
    and raw-pixel inputs can give saturated ones; in between, a wrong view or average shows in the numbers."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.head.fc3.weight.normal_(0, 1.0, generator=generator)
        model.head.fc3.bias.uniform_(-0.5, 0.5, generator=generator)
        probe = torch.rand(4, 3, input_size, input_size, generator=generator) * 255 - 120
        spread = model(probe).std().item()
        model.head.fc3.weight.mul_(2.0 / spread)
    return model


def tiny_model(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    torch.manual_seed(seed)
    options = {**TINY_MODEL, **overrides}
    model = create_net(options.pop("name"), **options).eval()
    return calibrate_logits(model, model.input_size, seed)


def write_image_folder(
    root: Path, sizes: list[tuple[int, int]], num_classes: int = 3, split: str = "val"
) -> Path:
    """root/split/class_k/img_i.JPEG with random smooth colour images of the given (width, height)."""
    rng = np.random.default_rng(0)
    for i, (width, height) in enumerate(sizes):
        folder = root / split / f"class_{i % num_classes}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, size=(max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
        Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(
            folder / f"img_{i:03d}.JPEG", quality=95
        )
    return root


def folder_data_config(root: Path) -> DataConfig:
    return DataConfig(name=DatasetKind.folder, root=str(root), crop_size=64, use_draft=False, num_workers=0)


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    model_cfg: dict[str, Any],
    data_cfg: dict[str, Any],
    classes: list[str] | None = None,
) -> Path:
    return Checkpoint(model.state_dict(), {"model": model_cfg, "data": data_cfg}, classes).save(path)


def make_predictions(
    probs: np.ndarray,
    labels: list[int] | np.ndarray,
    ids: list[str] | None = None,
    classes: list[str] | None = None,
    dataset: str = "folder",
    split: str = "val",
    model: str = "model_a",
    act: str = "prelu",
    protocol: str = "multiscale",
) -> Predictions:
    probs = np.asarray(probs, dtype=np.float32)
    num, num_classes = probs.shape
    return Predictions(
        ids=np.array(ids if ids is not None else [f"c/img_{i}.JPEG" for i in range(num)]),
        labels=np.asarray(labels, dtype=np.int64),
        probs=probs,
        metadata={
            "classes": classes or [f"n{c:08d}" for c in range(num_classes)],
            "class_names": None,
            "dataset": {"name": dataset, "root": "/data", "split": split},
            "protocol": protocol,
            "scales": [256, 384, 480],
            "model": {"name": model},
            "model_config": {"name": model, "act": act},
        },
    )
