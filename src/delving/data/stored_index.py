"""A copy's sample index (arrays) built once from its files and stored beside the folder listings.

Scanning the hub's 1,024 train shards' tar headers or its parquet files' label columns takes seconds to a
minute; the arrays it gives are stored under the listing cache ($DELVING_DATA_CACHE/index/, data/index.py)
and reused while every file it read is the same: real path, device, inode, size, and modification and change
times (the change time is what no user can set back). Files changed within the last seconds are not trusted
(their times may not move on the next change): that index is not stored. Processes that need the same
index at once (the ranks of a launch, each in its preflight) take turns on a lock file beside it: one builds
and stores it, the others then read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from delving.data.index import RACY_SECONDS, cache_root

log = logging.getLogger(__name__)

STORED_VERSION = 1
Index = tuple[dict, dict[str, np.ndarray]]  # (JSON-able facts, arrays)


def _identity(kind: str, files: Sequence[Path]) -> list:
    facts = []
    for path in files:
        stat = os.stat(path)
        facts.append(
            [
                os.path.realpath(path),
                stat.st_dev,
                stat.st_ino,
                stat.st_size,
                stat.st_mtime_ns,
                stat.st_ctime_ns,
            ]
        )
    return [STORED_VERSION, kind, facts]


def _cache_file(kind: str, files: Sequence[Path]) -> Path:
    names = "\0".join(os.path.realpath(path) for path in files)
    return cache_root() / "index" / f"{kind}-{hashlib.sha256(names.encode()).hexdigest()[:20]}.npz"


def _load(path: Path, identity: list) -> Index | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(stored["meta"].tobytes())
            if meta["identity"] != identity:
                return None
            return meta["facts"], {name: stored[name] for name in stored.files if name != "meta"}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("ignoring the stored index %s (%s): building it again", path, error)
        return None


def _store(path: Path, identity: list, index: Index, started_ns: int) -> None:
    newest = max(max(fact[4], fact[5]) for fact in identity[2])
    if newest > started_ns - RACY_SECONDS * 1e9:
        log.info("files of %s changed in the last seconds: its index is not stored", path.name)
        return
    meta = json.dumps({"identity": identity, "facts": index[0]}).encode()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            np.savez(file, meta=np.frombuffer(meta, dtype=np.uint8), **index[1])
        os.replace(tmp, path)
    except OSError as error:
        log.warning("cannot store the index in %s (%s): it is built again at each launch", path, error)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def _turn(path: Path):
    """Holds an exclusive lock on `<path>.lock` (no lock where the cache cannot be written)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (held for the block)
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def stored_index(kind: str, files: Sequence[Path], build: Callable[[], Index]) -> Index:
    """The index of `files`: the stored one while they are unchanged, else `build()` (then stored)."""
    if not files:
        return build()
    identity = _identity(kind, files)
    path = _cache_file(kind, files)
    found = _load(path, identity)
    if found is not None:
        return found
    with _turn(path):
        found = _load(path, identity)  # another process may have built it while this one waited
        if found is not None:
            return found
        started = time.time_ns()
        index = build()
        _store(path, identity, index, started)
    return index
