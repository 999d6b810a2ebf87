"""A run folder's file names and their paths, below every room: the engine writes them, evaluation and the
report read them (the run's lock and its record of having finished are the engine's: engine/run_dir.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

# A run folder's files: these names are spelled here only (RunFiles's properties give their paths).
LAST_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
LOCK_FILE = ".lock"
FINISHED_FILE = "finished.json"
PREVIOUS_FOLDER = "previous"
BEST_PATTERN = "best-*.pt"

_Files = TypeVar("_Files", bound="RunFiles")


def best_checkpoint_name(epoch: int) -> str:
    """A best-k checkpoint's file name (a hard link to last.pt as it was after that epoch's validation)."""
    return f"best-epoch{epoch:03d}.pt"


class RunFiles:
    """A run folder's file paths (`last`, `metrics`, `log_file`, `predictions(...)`, `best(...)`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def of(cls: type[_Files], run: RunFiles | str | os.PathLike) -> _Files:
        return run if isinstance(run, cls) else cls(run.path if isinstance(run, RunFiles) else run)

    @property
    def last(self) -> Path:
        return self.path / LAST_CHECKPOINT

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def log_file(self) -> Path:
        return self.path / LOG_FILE

    def predictions(self, protocol: str) -> Path:
        """The trainer's own final-evaluation predictions (delving-eval's names carry their scales)."""
        return self.path / f"predictions-{protocol}.npz"

    def best(self, file_name: str) -> Path:
        return self.path / file_name
