"""A run folder's file names and their paths, below every room: the engine writes them, evaluation and the
report read them (the run's lock and its record of having finished are the engine's: engine/run_dir.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

# A run folder's files: these names are spelled here only (RunFiles's properties give their paths).
LAST_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
LOCK_FILE = ".lock"
FINISHED_FILE = "finished.json"
PREVIOUS_FOLDER = "previous"
BEST_PATTERN = "best-*.pt"
FINAL_CHECKPOINT_KEY = "checkpoint_sha256"  # finished.json: the sha256 of last.pt as the run finished

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

    def finished(self) -> dict[str, Any] | None:
        """finished.json's record (None: the run has not finished)."""
        path = self.path / FINISHED_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):  # written atomically, so only a hand edit gets here
            return None

    def final_checkpoint_sha256(self) -> str | None:
        """The sha256 of last.pt as the run finished (None: not finished, or finished before it was kept)."""
        return (self.finished() or {}).get(FINAL_CHECKPOINT_KEY)


def not_from_final_checkpoint(checkpoint: Any, final_sha256: str | None, final: Path) -> str | None:
    """Why a predictions file (its metadata's `checkpoint` {path, sha256}) is not of the final checkpoint
    `final` whose sha256 is `final_sha256`, or None where it is (or either hash is unknown)."""
    sha256 = checkpoint.get("sha256") if isinstance(checkpoint, dict) else None
    if not sha256 or not final_sha256 or sha256 == final_sha256:
        return None
    return (
        f"made from another state of {final} (sha256 {sha256[:12]}, e.g. by delving-eval during training), not "
        f"the final one (sha256 {final_sha256[:12]}): evaluate it again (delving-eval checkpoint={final.parent})"
    )
