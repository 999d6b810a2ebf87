"""A split's listing in arrays, cached between launches.

At ImageNet's size (1.28 M files) a Python list of (path, label) tuples costs ~220 MB per loader worker: every
forked worker that reads an entry (or runs a garbage collection) writes its reference count and so copies the
pages. Here the paths are one uint8 buffer plus offsets and the labels one int64 array: no Python object per
sample, nothing a worker writes, and `gc.freeze()` (loaders.py) keeps the collector off the rest.

Listing 1.28 M files takes seconds on a local disk and far longer on a network file system, so the listing is
stored under $DELVING_DATA_CACHE (default ~/.cache/delving)/index/ and reused when nothing it depends on has
changed: the split's real path and inode, and `change_key` of every folder it walked. Adding, removing or
renaming a file changes its folder's times, but `tar -x`, `rsync -a`, `cp -a` and `touch -d` set the
modification time back; the status-change time (st_ctime) cannot be set back by any user: every such change,
including setting the mtime, moves it to now. A folder changed within the last seconds (the clock granularity
of some file systems) is never trusted: that listing is not stored. Using a stored listing is logged, with how
to list afresh; delving-verify-data always lists afresh and stores what it found.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from delving.data.datasets import walk_split
from delving.io import DiskFullError, atomic_write

log = logging.getLogger(__name__)

INDEX_VERSION = 2  # 2: folders keyed by change_key (ctime, mtime, inode), not the mtime alone
CACHE_ENV = "DELVING_DATA_CACHE"
RACY_SECONDS = 3.0  # a folder modified this recently may change again within its time stamp's granularity


class PackedStrings:
    """n strings (file names in the OS's encoding) as one uint8 buffer and n + 1 offsets."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob, self.offsets = blob, offsets

    @classmethod
    def from_bytes(cls, items: Sequence[bytes]) -> PackedStrings:
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in items], out=offsets[1:])
        return cls(np.frombuffer(b"".join(items), dtype=np.uint8), offsets)

    @classmethod
    def from_strings(cls, items: Sequence[str]) -> PackedStrings:
        return cls.from_bytes([os.fsencode(item) for item in items])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def raw(self, i: int) -> bytes:
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def __getitem__(self, i: int) -> str:
        return os.fsdecode(self.raw(i))

    @property
    def nbytes(self) -> int:
        return self.blob.nbytes + self.offsets.nbytes


@dataclass
class FolderListing:
    """The images of one split folder: paths relative to it (`<class>/<file>`) and class indices."""

    split_dir: Path
    classes: list[str]
    paths: PackedStrings
    labels: np.ndarray  # int64, one per image
    folders: list[bytes]  # the folders walked, relative to split_dir: their times key the stored listing


def cache_root() -> Path:
    """$DELVING_DATA_CACHE, or ~/.cache/delving: generated data sets and listings."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "delving").expanduser()


def _cache_file(split_dir: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(os.path.realpath(split_dir))).hexdigest()[:20]
    return cache_root() / "index" / f"{split_dir.name}-{digest}.npz"


def change_key(paths: Sequence[str | bytes | os.PathLike]) -> np.ndarray:
    """(st_ctime_ns, st_mtime_ns, st_ino) of each path, as an (n, 3) int64 array: what a stored listing (or any
    cache of what is in these folders or files) is keyed on. The ctime is the part no user can set back: a
    change of the contents, and setting the mtime back (tar -x, rsync -a, cp -a, touch -d), both move it to
    now; the inode tells a folder replaced at the same path. The ctime column is also what `too_fresh` checks.
    """
    stats = [os.stat(path) for path in paths]
    return np.array([(s.st_ctime_ns, s.st_mtime_ns, s.st_ino) for s in stats], dtype=np.int64).reshape(-1, 3)


def too_fresh(key: np.ndarray, listed_at_ns: int) -> bool:
    """Whether a path of `change_key` changed too shortly before the listing began to trust its time stamp
    (a change in the same clock tick would not move it): such a listing must not be stored."""
    return bool(len(key)) and int(key[:, 0].max()) > listed_at_ns - RACY_SECONDS * 1e9


def _folder_paths(split_dir: Path, folders: Sequence[bytes]) -> list[bytes]:
    base = os.fsencode(split_dir)
    return [os.path.join(base, f) if f else base for f in folders]


def _identity(split_dir: Path) -> dict:
    stat = os.stat(split_dir)
    return {
        "version": INDEX_VERSION,
        "real_path": os.path.realpath(split_dir),
        "dev": stat.st_dev,
        "ino": stat.st_ino,
    }


def _load(path: Path, split_dir: Path) -> FolderListing | None:
    """The stored listing when it is still the folder's; None when absent, stale or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(stored["meta"].tobytes())
            if meta["identity"] != _identity(split_dir):
                return None
            packed = PackedStrings(stored["folder_blob"], stored["folder_offsets"])
            folders = [packed.raw(i) for i in range(len(packed))]
            if not np.array_equal(change_key(_folder_paths(split_dir, folders)), stored["folder_keys"]):
                return None
            paths = PackedStrings(stored["path_blob"], stored["path_offsets"])
            labels = stored["labels"]
    except FileNotFoundError:
        return None
    except Exception as error:  # damaged (empty: EOFError, truncated: BadZipFile...) or another version's
        # Only the error's type: NumPy's messages advise allow_pickle, which is never the fix here.
        log.warning(
            "ignoring the stored listing %s: unreadable (%s), damaged or from another version; listing %s again",
            path,
            type(error).__name__,
            split_dir,
        )
        return None
    if len(labels) != meta["count"] or len(paths) != meta["count"]:
        return None
    return FolderListing(split_dir, list(meta["classes"]), paths, labels, folders)


def _store(path: Path, listing: FolderListing, listed_at_ns: int) -> bool:
    """Writes the listing atomically (fsynced before the rename); False (and a log line) when it is too fresh or
    the cache is unwritable."""
    keys = change_key(_folder_paths(listing.split_dir, listing.folders))
    if too_fresh(keys, listed_at_ns):
        log.info("%s changed in the last seconds: its listing is not stored", listing.split_dir)
        return False
    meta = {
        "identity": _identity(listing.split_dir),
        "count": len(listing.labels),
        "classes": listing.classes,
    }
    folders = PackedStrings.from_bytes(listing.folders)
    try:
        atomic_write(
            path,
            lambda file: np.savez(
                file,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                folder_blob=folders.blob,
                folder_offsets=folders.offsets,
                folder_keys=keys,
                path_blob=listing.paths.blob,
                path_offsets=listing.paths.offsets,
                labels=listing.labels,
            ),
        )
        return True
    except (OSError, DiskFullError) as error:  # a convenience: a full or closed cache is not fatal
        log.warning(
            "cannot store the listing of %s in %s (%s): it is listed again at each launch",
            listing.split_dir,
            path,
            error,
        )
        return False


def list_folder(split_dir: Path) -> FolderListing:
    """A fresh listing (no cache)."""
    walk = walk_split(split_dir)
    return FolderListing(
        split_dir, walk.classes, PackedStrings.from_bytes(walk.paths), walk.labels, walk.folders
    )


def folder_listing(split_dir: str | os.PathLike, fresh: bool = False) -> FolderListing:
    """The split's listing: the stored one when the folders have not changed since, else a new (stored) one.
    `fresh`: list the folder whatever is stored, and store the result (delving-verify-data)."""
    split_dir = Path(split_dir)
    path = _cache_file(split_dir)
    stored = _load(path, split_dir) if split_dir.is_dir() and not fresh else None
    if stored is not None:
        log.info(
            "using the stored listing of %s (%d images, unchanged since it was stored); to list it afresh, run "
            "delving-verify-data on the data set or delete %s",
            split_dir,
            len(stored.labels),
            path,
        )
        return stored
    started = time.time_ns()
    listing = list_folder(split_dir)
    _store(path, listing, started)
    return listing
