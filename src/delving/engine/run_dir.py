"""A run's home on a shared disk: one live run at a time, old runs moved aside, a "finished" record.

The lock is a POSIX record lock (`lockf`) on `<run dir>/.lock`: the kernel (or the NFS lock manager)
drops it when its process dies however it dies, so a killed run's lock is stale by construction and
the next launch takes it over. The host, pid and SLURM job inside only make the refusal message useful.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, TextIO

from delving.errors import UserError
from delving.evaluation.config import Protocol
from delving.io import atomic_write_text, can_write, remove_stale_temps, unwritable_place, user_name
from delving.run_files import (
    BEST_PATTERN,
    FINAL_CHECKPOINT_KEY,
    FINISHED_FILE,
    LAST_CHECKPOINT,
    LOCK_FILE,
    LOG_FILE,
    METRICS_FILE,
    PREVIOUS_FOLDER,
    RunFiles,
)

log = logging.getLogger("delving")

RELEASED = "released"  # how .lock starts once its run has ended cleanly
# What a run writes; start_over moves these aside (the Hydra config and train.log of this launch stay).
RUN_OUTPUTS = (LAST_CHECKPOINT, BEST_PATTERN, METRICS_FILE, "predictions-*.npz", FINISHED_FILE, "wandb")
# The files only the run (the lock holder) writes: a temp file of these is a killed write's, never a live one
# (delving-eval's files beside last.pt carry their scales in the name).
TRAINER_FILES = (
    LAST_CHECKPOINT, METRICS_FILE, FINISHED_FILE, *(f"predictions-{p.value}.npz" for p in Protocol)
)  # fmt: skip


class RunDirectoryBusy(UserError):
    pass


def check_run_dir_writable(path: Path) -> None:
    """Before any work: the run folder can be created and written, and so can the files a run appends to."""
    why = unwritable_place(path)
    if why is None and path.is_dir():
        me = user_name(os.geteuid())
        for name in (LOG_FILE, LAST_CHECKPOINT, METRICS_FILE, LOCK_FILE, FINISHED_FILE):
            item = path / name
            if item.exists() and not can_write(item):
                why = f"{item}, which belongs to {user_name(item.stat().st_uid)}, cannot be written by {me}"
                break
    if why is not None:
        raise UserError(
            f"run folder {path}: {why}. Run as its owner, or choose a place you can write (another run_name=, "
            "paths.outputs= or hydra.run.dir=)"
        )


def starts_fresh(resume: str | None) -> bool:
    """resume=null: a new run (refused into a directory that holds one, unless start_over=true)."""
    return resume in (None, "", "null")


class RunDirectory(RunFiles):
    """A run's folder: its file names (RunFiles), its lock, and its record of having finished. The Trainer and
    the entry points reach a run's files only through it."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self._lock_handle: TextIO | None = None

    def lock(self) -> None:
        """Take the run's lock or refuse, naming the holder; a lock left by a dead run is taken over."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            if error.errno not in (errno.EAGAIN, errno.EACCES):  # held; anything else: this disk has no locks
                log.warning("cannot lock %s (%s); two runs here would not be stopped", self.path, error)
                return
            raise RunDirectoryBusy(
                f"run directory {self.path} is in use by a live run ({holder}); wait for it to end, stop it, "
                "or launch with another run_name="
            ) from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous and not previous.startswith(RELEASED):  # its holder ended without unlock(): killed
            log.info("took over the lock of a run that is no longer alive (%s)", previous)
        handle.seek(0)
        handle.truncate()
        job = os.environ.get("SLURM_JOB_ID")
        handle.write(
            f"host {socket.gethostname()} pid {os.getpid()}"
            + (f" SLURM job {job}" if job else "")
            + f" since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        handle.flush()
        self._lock_handle = handle
        remove_stale_temps(self.path, TRAINER_FILES)

    def unlock(self) -> None:
        """Release the lock and mark it released, so the next run of this folder does not take this run for
        one that was killed (the file stays: its content is history)."""
        if self._lock_handle is not None:
            handle, self._lock_handle = self._lock_handle, None
            try:
                handle.seek(0)
                holder = handle.read().strip()
                handle.seek(0)
                handle.truncate()
                handle.write(f"{RELEASED} {time.strftime('%Y-%m-%d %H:%M:%S')} by {holder}\n")
            except OSError:  # a full or vanished disk: the lock still goes with the close
                pass
            finally:
                handle.close()

    def has_outputs(self) -> bool:
        return any(any(self.path.glob(pattern)) for pattern in RUN_OUTPUTS)

    def move_outputs_aside(self) -> Path:
        """start_over=true: the old run's files go to previous/<time>/ instead of being mixed with the new."""
        target = self.path / PREVIOUS_FOLDER / time.strftime("%Y%m%d-%H%M%S")
        target.mkdir(parents=True, exist_ok=False)
        for pattern in RUN_OUTPUTS:
            for item in self.path.glob(pattern):
                item.rename(target / item.name)
        log.info("start_over=true: moved the previous run's files to %s", target)
        return target

    def mark_finished(self, record: dict[str, Any]) -> Path:
        """finished.json, with the sha256 of the final last.pt: a predictions file of another state of it
        (delving-eval on the live run) is told apart by delving-report and delving-ensemble."""
        from delving.checkpoint import file_sha256  # the model code loads only once a run trains

        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        sha256 = file_sha256(self.last) if self.last.is_file() else None
        return atomic_write_text(
            self.path / FINISHED_FILE,
            json.dumps({"finished": stamp, **record, FINAL_CHECKPOINT_KEY: sha256}, indent=2),
        )
