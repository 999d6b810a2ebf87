"""Files a shared disk can trust: written whole or not at all, with the umask's mode, and durable once renamed."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import pwd
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from delving.errors import UserError

log = logging.getLogger("delving")

TEMP_SUFFIX = ".tmp"
# How Python holds the bytes of a file name that are not UTF-8 (os.fsdecode's surrogateescape).
_UNDECODED_BYTE = re.compile("[\udc80-\udcff]")
# Under this much free space, a failed write is taken for a full disk: torch.save reports its short write as
# a RuntimeError ("unexpected pos ..."), without errno.
NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(UserError):
    """No space left where a file was being written; the file itself is unchanged (written atomically)."""

    def __init__(self, path: Path, then: str = "free space there and run the same command again") -> None:
        state = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        super().__init__(f"the disk at {path.parent} is full: writing {path.name} failed ({state}); {then}")
        self.path = path


def is_disk_full(error: BaseException, folder: Path | None = None) -> bool:
    """`error` (from a write into `folder`) came from a full disk or an exhausted quota. With `folder`, an
    error without errno (torch.save's short write) counts when the folder's disk is nearly full."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if folder is None or not isinstance(error, OSError | RuntimeError):
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


def utf8(text: str) -> bytes:
    """`text` as UTF-8. A file name's bytes that are not UTF-8 (a class folder named on another system), which
    Python holds as lone surrogates, are written as \\xNN: the text stays valid UTF-8 and names the byte."""
    escaped = _UNDECODED_BYTE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)
    return escaped.encode("utf-8", "backslashreplace")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(utf8(text)))


def atomic_write_files(files: dict[Path, Callable[[BinaryIO], None]]) -> None:
    """Several files, each written by its function: none is renamed into place unless every one was written,
    so a full disk changes none of them (and is one line naming the folder)."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, write in files.items():
            temps.append((_write_temp(path, write), path))
        for tmp, path in temps:
            os.replace(tmp, path)
            fsync_folder(path.parent)
    except (OSError, DiskFullError) as error:  # _write_temp has already named a full disk DiskFullError
        if isinstance(error, DiskFullError) or is_disk_full(error):
            folders = ", ".join(sorted({str(path.parent) for path in files}))
            raise OutputSpaceError(
                f"no space left on the disk of {folders} (or over quota): none of "
                f"{', '.join(path.name for path in files)} was changed; free some space, or write elsewhere, "
                "and run the command again"
            ) from None
        raise
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


class OutputSpaceError(UserError, OSError):
    """The disk (or quota) is full while writing a command's output; what was there before is kept whole."""


def write_folder_atomically(
    folder: str | os.PathLike, write: Callable[[Path], None], replaceable: Callable[[Path], bool]
) -> Path:
    """Writes a folder's whole content with `write(temp)` into a hidden temp folder beside it, then puts it
    in place: renamed when `folder` is new, exchanged with the old one (then removed) when that is empty or
    holds only files `replaceable` accepts (a previous output of the same command), else each new file is
    renamed into `folder`, leaving its other files alone. A failure while writing (a full disk, a signal)
    leaves the previous folder as it was and removes the temp folder."""
    folder = Path(os.path.abspath(folder))  # "." has no name to put a temp folder beside
    folder.parent.mkdir(parents=True, exist_ok=True)
    temp = folder.with_name(f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    temp.mkdir()
    try:
        write(temp)
        for path in temp.iterdir():
            _fsync_file(path)
        fsync_folder(temp)
        if folder.is_dir():
            os.chmod(temp, folder.stat().st_mode & 0o7777)
        _put_in_place(temp, folder, replaceable)
    except BaseException as error:
        shutil.rmtree(temp, ignore_errors=True)
        if isinstance(error, DiskFullError) or is_disk_full(error):
            raise OutputSpaceError(
                f"no space left on the disk of {folder} (or over quota): nothing was changed there; free some "
                "space, or choose another output_dir=, and run the command again"
            ) from None
        raise
    fsync_folder(folder.parent)
    return folder


def _fsync_file(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _put_in_place(temp: Path, folder: Path, replaceable: Callable[[Path], bool]) -> None:
    if not folder.exists():
        os.rename(temp, folder)
        return
    # A symlink stays a symlink, and the current folder (or one above it) is never swapped under the user.
    in_use = folder.is_symlink() or Path.cwd().resolve().is_relative_to(folder.resolve())
    if not in_use and all(replaceable(path) for path in folder.iterdir()):
        if _exchange(temp, folder):
            shutil.rmtree(temp, ignore_errors=True)  # now the old folder
            return
        old = temp.with_suffix(".old")
        os.rename(folder, old)  # no atomic exchange here: a crash between the renames leaves `old` whole
        os.rename(temp, folder)
        shutil.rmtree(old, ignore_errors=True)
        return
    for path in sorted(temp.iterdir()):  # a folder with other files: only the new files are replaced
        os.replace(path, folder / path.name)
    fsync_folder(folder)
    shutil.rmtree(temp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is not available."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class OutputFolderError(UserError):
    """An output folder that cannot be written (a file, or a place without write permission)."""


def check_output_folder(folder: str | os.PathLike, key: str, beside: bool = False) -> Path:
    """Refuses, before any work, an output folder this user cannot write: it (where it exists) and the folder
    that will hold it must be writable; with `beside`, also the folder beside it (for write_folder_atomically's
    temp folder), even where it exists."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{key}={folder} is a file, not a folder: give a folder")
    places = [folder] if folder.is_dir() else []
    if beside or not places:
        existing = folder.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise OutputFolderError(f"{key}={folder}: {existing} is a file, so no folder can be made there")
        places.append(existing)
    for place in places:
        if not os.access(place, os.W_OK | os.X_OK):
            raise OutputFolderError(
                f"{key}={folder}: no permission to write in {place}; choose another {key}="
            )
    return folder


# ---------------------------------------------------------------- places one can write (checked before the work)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def can_write(path: Path) -> bool:
    """As this process's effective user and capabilities (read-only mounts and ACLs included)."""
    return os.access(path, os.W_OK | os.X_OK if path.is_dir() else os.W_OK, effective_ids=True)


def free_bytes(path: Path) -> tuple[int | None, int]:
    """(bytes this user may still write on the disk of `path` or its nearest existing folder, or None where
    that cannot be told; the file system's block size)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        disk = os.statvfs(existing)
    except OSError:
        return None, 4096
    free = disk.f_bfree if os.geteuid() == 0 else disk.f_bavail  # root may use the reserved blocks
    return free * disk.f_frsize, disk.f_frsize or 4096


PROBE_BYTES = 4096  # one block: a full disk refuses it, where an empty file could still be made


def write_probe(folder: Path) -> str | None:
    """Why a file cannot be written in `folder` (an existing folder), found by writing one block there and
    removing it, or None: the only test that /proc, a read-only or full disk and ACLs all answer truly."""
    probe = temp_path(folder / "write-probe")
    try:
        with open(probe, "xb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        return "no space left on its disk (or over quota)" if full else error.strerror or str(error)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None


def unwritable_place(path: Path) -> str | None:
    """Why `path` (a folder to create or write into) cannot be written, or None: the first thing in the way."""
    me = user_name(os.geteuid())
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not can_write(existing):
        owner = user_name(existing.stat().st_uid)
        whose = "" if owner == me else f", which belongs to {owner},"
        return f"{existing}{whose} cannot be written by {me}"
    return None
