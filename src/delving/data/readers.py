"""Readers: random access to one split's samples (folders or shards), the bottom of the loaders' stack.

A reader keeps its index in arrays (data/index.py), so forked loader workers share its pages instead of
copying them. `open_split` is the one way in: it validates the data config, finds the split (the synthetic
set is generated on first use), and refuses a train/val pair whose classes differ.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from delving.data.config import DataConfig, DatasetKind, validate
from delving.data.datasets import check_class_lists, existing_root, list_classes, resolve_root
from delving.data.decode import ImageSource
from delving.data.index import FolderListing, folder_listing
from delving.data.shards import ShardReader, index_path, open_shards


class SampleReader(Protocol):
    def __len__(self) -> int: ...

    def label(self, i: int) -> int: ...

    def sample_id(self, i: int) -> str: ...

    def source(self, i: int) -> ImageSource: ...

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray: ...


class FolderReader:
    """Samples of a folder data set, in torchvision's ImageFolder order."""

    def __init__(self, listing: FolderListing) -> None:
        self.split_dir = os.fspath(listing.split_dir)
        self.paths = listing.paths  # relative to split_dir, packed: no Python object per sample
        self.labels = listing.labels

    def sample_id(self, i: int) -> str:
        """The file's path relative to the split folder (`<class>/<file>`), as ImageNet's lists name images."""
        return Path(self.paths[i]).as_posix()

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def source(self, i: int) -> ImageSource:
        return os.path.join(self.split_dir, self.paths[i])

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng((seed, epoch, 0)).permutation(len(self.labels))


LISTING_BLOCK = 4096  # samples per digest block: a mismatch is located by block, then entry by entry


def listing_block_digests(reader: SampleReader, block: int = LISTING_BLOCK) -> list[str]:
    """A sha256 per `block` samples of (sample id, label), in order: two listings are the same exactly when
    their counts and these lists are equal (comparing ranks sends ~300 short strings for ImageNet)."""
    digests = []
    if isinstance(reader, FolderReader):  # the packed arrays: no Python object per sample
        offsets, blob, labels = reader.paths.offsets, reader.paths.blob, reader.labels
        for start in range(0, len(reader), block):
            stop = min(start + block, len(reader))
            digest = hashlib.sha256(blob[offsets[start] : offsets[stop]].tobytes())
            digest.update((offsets[start : stop + 1] - offsets[start]).tobytes())
            digest.update(np.ascontiguousarray(labels[start:stop], dtype=np.int64).tobytes())
            digests.append(digest.hexdigest())
        return digests
    for start in range(0, len(reader), block):
        digest = hashlib.sha256()
        for i in range(start, min(start + block, len(reader))):
            digest.update(f"{reader.sample_id(i)}\0{reader.label(i)}\n".encode("utf-8", "surrogateescape"))
        digests.append(digest.hexdigest())
    return digests


def listing_entries(reader: SampleReader, start: int, stop: int) -> list[tuple[str, int]]:
    """(sample id, label) of samples [start, stop): to name where two listings differ."""
    return [(reader.sample_id(i), reader.label(i)) for i in range(start, min(stop, len(reader)))]


def open_split(cfg: DataConfig, split: str, fresh_listing: bool = False) -> tuple[SampleReader, list[str]]:
    """The reader and class list of one split of the configured data set (folders or shards).
    `fresh_listing`: list a folder split afresh whatever is stored (and store the new listing).

    When `split` is the train or the val split and the other one exists, their class lists must be equal:
    otherwise every val label would index another class (a ClassListError names the first difference).
    """
    validate(cfg)
    root = resolve_root(cfg)
    if cfg.name == DatasetKind.shards:
        shards = open_shards(root, split)
        reader: SampleReader = shards
        classes = shards.classes
    else:
        listing = folder_listing(existing_root(root) / split, fresh=fresh_listing)
        reader, classes = FolderReader(listing), listing.classes
    other = {cfg.train_split: cfg.val_split, cfg.val_split: cfg.train_split}.get(split)
    other_classes = None if other is None else _split_classes(cfg, root, other)
    if other_classes is not None:
        train_first = split == cfg.train_split
        train, val = (classes, other_classes) if train_first else (other_classes, classes)
        check_class_lists(train, val, f"split {cfg.train_split!r}", f"split {cfg.val_split!r}", root)
    return reader, classes


def _split_classes(cfg: DataConfig, root: Path, split: str) -> list[str] | None:
    """The class list of another split, or None where that split is not there (e.g. a val-only copy)."""
    if cfg.name == DatasetKind.shards:
        return open_shards(root, split).classes if index_path(root, split).is_file() else None
    return list_classes(root / split) if (root / split).is_dir() else None


def prepare_listings(cfg: DataConfig) -> None:
    """Lists (and stores) the train and val folders, so that other processes of a launch read the stored
    listing instead of walking the tree again; shards and splits that are not there are left alone."""
    if cfg.name == DatasetKind.shards:
        return
    root = resolve_root(cfg)
    for split in (cfg.train_split, cfg.val_split):
        if (root / split).is_dir():
            folder_listing(root / split)


__all__ = [
    "FolderReader",
    "SampleReader",
    "ShardReader",
    "listing_block_digests",
    "listing_entries",
    "open_split",
    "prepare_listings",
]
