"""Files a shared disk can trust: written whole or not at all, with the umask's mode, and durable once renamed."""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from delving.errors import UserError

log = logging.getLogger("delving")

TEMP_SUFFIX = ".tmp"
# Under this much free space, a failed write is taken for a full disk: torch.save reports its short write as
# a RuntimeError ("unexpected pos ..."), without errno.
NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(UserError):
    """No space left where a file was being written; the file itself is unchanged (written atomically)."""

    def __init__(self, path: Path, then: str = "free space there and run the same command again") -> None:
        state = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        super().__init__(f"the disk at {path.parent} is full: writing {path.name} failed ({state}); {then}")
        self.path = path


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """`error` (from a write into `folder`) came from a full disk or an exhausted quota."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(error, OSError | RuntimeError):
        return False
    try:
        disk = os.statvfs(folder)
    except OSError:
        return False
    free = disk.f_bfree if os.geteuid() == 0 else disk.f_bavail  # root may use the reserved blocks
    return free * disk.f_frsize < NEARLY_FULL_BYTES


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path` (same file system, so the rename is atomic), unique per process and call."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable: without it a crash can forget the new name on some file systems."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some network file systems refuse fsync on a folder; the rename still happened
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """`write(handle)` into a temp file, fsync, rename over `path`, fsync the folder.

    The temp file is created with mode 0666 minus the umask (as `open` does), unlike `mkstemp`'s 0600, so
    colleagues on a shared disk can read checkpoints and predictions as the umask allows. A failure or a
    signal during the write removes the temp file; a SIGKILL leaves it, and `remove_stale_temps` clears it.
    """
    path = Path(path)
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def _write_temp(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """The temp sibling of `path`, written and fsynced; removed again if the write fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:
        full = is_disk_full(error, path.parent)  # before the unlink frees the space again
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFullError(path) from None
        raise
    return tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_texts(files: dict[Path, str]) -> None:
    """Several text files, each atomic; none is renamed into place unless every one was written."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            temps.append(
                (_write_temp(path, lambda handle, text=text: handle.write(text.encode("utf-8"))), path)
            )
        for tmp, path in temps:
            os.replace(tmp, path)
            fsync_folder(path.parent)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temp files that killed writers of `names` (glob patterns) left in `folder`; call it while
    holding the folder's lock, for files only the lock holder writes (another tool's temp files may be live)."""
    removed = []
    stale_files = [stale for name in names for stale in folder.glob(f".{name}.*{TEMP_SUFFIX}")]
    for stale in stale_files:
        if stale.is_file():
            size = stale.stat().st_size
            stale.unlink(missing_ok=True)
            removed.append(stale)
            log.warning("removed %s (%.1f MB), left by a write that was killed", stale, size / 1e6)
    return removed
