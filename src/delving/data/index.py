"""A split's listing in arrays, cached between launches.

At ImageNet's size (1.28 M files) a Python list of (path, label) tuples costs ~220 MB per loader worker: every
forked worker that reads an entry (or runs a garbage collection) writes its reference count and so copies the
pages. Here the paths are one uint8 buffer plus offsets and the labels one int64 array: no Python object per
sample, nothing a worker writes, and `gc.freeze()` (loaders.py) keeps the collector off the rest.

Listing 1.28 M files takes seconds on a local disk and far longer on a network file system, so the listing is
stored under $DELVING_DATA_CACHE (default ~/.cache/delving)/index/ and reused when nothing it depends on has
changed: the split's real path and inode, and the modification time of every folder it walked (adding,
removing or renaming a file changes its folder's time). A folder changed within the last seconds (the clock
granularity of some file systems) is never trusted: that listing is not stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from delving.data.datasets import walk_split

log = logging.getLogger(__name__)

INDEX_VERSION = 1
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


def _mtimes(split_dir: Path, folders: Sequence[bytes]) -> np.ndarray:
    base = os.fsencode(split_dir)
    return np.array(
        [os.stat(os.path.join(base, f) if f else base).st_mtime_ns for f in folders], dtype=np.int64
    )


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
            if not np.array_equal(_mtimes(split_dir, folders), stored["folder_mtimes"]):
                return None
            paths = PackedStrings(stored["path_blob"], stored["path_offsets"])
            labels = stored["labels"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:  # damaged, or from another version
        log.warning("ignoring the stored listing %s (%s): listing %s again", path, error, split_dir)
        return None
    if len(labels) != meta["count"] or len(paths) != meta["count"]:
        return None
    return FolderListing(split_dir, list(meta["classes"]), paths, labels, folders)


def _store(path: Path, listing: FolderListing, listed_at_ns: int) -> bool:
    """Writes the listing atomically; False (and a log line) when it is too fresh or the cache is unwritable."""
    mtimes = _mtimes(listing.split_dir, listing.folders)
    if mtimes.max() > listed_at_ns - RACY_SECONDS * 1e9:
        log.info("%s changed in the last seconds: its listing is not stored", listing.split_dir)
        return False
    meta = {
        "identity": _identity(listing.split_dir),
        "count": len(listing.labels),
        "classes": listing.classes,
    }
    folders = PackedStrings.from_bytes(listing.folders)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            np.savez(
                file,
                meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                folder_blob=folders.blob,
                folder_offsets=folders.offsets,
                folder_mtimes=mtimes,
                path_blob=listing.paths.blob,
                path_offsets=listing.paths.offsets,
                labels=listing.labels,
            )
        os.replace(tmp, path)
        return True
    except OSError as error:
        log.warning(
            "cannot store the listing of %s in %s (%s): it is listed again at each launch",
            listing.split_dir,
            path,
            error,
        )
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        return False


def list_folder(split_dir: Path) -> FolderListing:
    """A fresh listing (no cache)."""
    walk = walk_split(split_dir)
    return FolderListing(
        split_dir, walk.classes, PackedStrings.from_bytes(walk.paths), walk.labels, walk.folders
    )


def folder_listing(split_dir: str | os.PathLike) -> FolderListing:
    """The split's listing: the stored one when the folders have not changed since, else a new (stored) one."""
    split_dir = Path(split_dir)
    path = _cache_file(split_dir)
    stored = _load(path, split_dir) if split_dir.is_dir() else None
    if stored is not None:
        return stored
    started = time.time_ns()
    listing = list_folder(split_dir)
    _store(path, listing, started)
    return listing
