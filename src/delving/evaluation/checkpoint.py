"""Read a checkpoint the trainer wrote: {"model": state_dict, "config": resolved config dict, "epoch": int, ...}."""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from delving.models import SPPNet, build_model


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or whose weights do not fit the model its config describes."""


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[SPPNet, dict[str, Any], str]:
    """(model in eval mode, the checkpoint's config dict, the file's sha256)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch checkpoint: {exc}") from exc
    if not isinstance(checkpoint, dict) or not {"model", "config"} <= checkpoint.keys():
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"checkpoint {path} needs 'model' and 'config' entries, has {keys}")
    config = checkpoint["config"]
    if not isinstance(config.get("model"), dict):
        raise CheckpointError(f"checkpoint {path}: its config has no 'model' section")
    try:
        model = build_model(config["model"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: its model config {config['model']} is invalid: {exc}"
        ) from exc
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: its weights do not match the model its config describes "
            f"({config['model']}): {exc}"
        ) from exc
    return model.eval(), config, file_sha256(path)
