"""Checkpoints: written atomically, loaded with weights_only=True, checked against the run before use."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
# Model options whose change makes a checkpoint another model (dropout or init do not).
MODEL_IDENTITY_KEYS = ("name", "act", "width", "num_classes", "input_size", "spp_levels")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run; the message says why and what to do."""


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass resume=<an existing file> or resume=null"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is unreadable (corrupt, truncated or not a torch file): {error}. "
            "Delete it to start over, or pass resume=<another checkpoint>."
        ) from error
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION or "model" not in state:
        raise CheckpointError(f"{path} is not a delving checkpoint (format {FORMAT_VERSION})")
    return state


def check_resumable(state: dict[str, Any], config: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint of another model or of another schedule, naming the keys that differ."""
    saved, current = state["config"], config
    model_diff = {
        key: (saved["model"].get(key), current["model"].get(key))
        for key in MODEL_IDENTITY_KEYS
        if saved["model"].get(key) != current["model"].get(key)
    }
    if model_diff:
        details = ", ".join(f"model.{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in model_diff.items())
        raise CheckpointError(
            f"{path} holds another model ({details}). Resume with the same model options, "
            "or start a new run directory (resume=null, another hydra.run.dir)."
        )
    schedule_keys = [
        ("train", "epochs"),
        ("train", "batch_size"),
        ("sched", "name"),
        ("optim", "momentum_form"),
    ]
    changed = [
        f"{a}.{b}: {saved[a][b]!r} -> {current[a][b]!r}"
        for a, b in schedule_keys
        if saved[a][b] != current[a][b]
    ]
    if changed:
        raise CheckpointError(
            f"{path} was trained with another schedule ({'; '.join(changed)}); resuming would not reproduce "
            "an uninterrupted run. Use the original values, or start a new run (resume=null)."
        )


def capture_rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        # weights_only loading takes no NumPy arrays: keep the generator's key as a list of ints.
        "numpy": {
            **numpy_state,
            "state": {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()},
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    key = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
