"""Readers: random access to one split's samples, whatever the copy, the bottom of the loaders' stack.

Every copy of a data set (the folder layout, our shards, the hub's shards, parquet files) is one `Copy` in
`COPIES`: how to open a split's reader, whether a split is there, and what data.root must hold. The loaders,
delving-verify-data, the mean image, evaluation and preflight's data checks all go through it, so a new copy
is one reader module and one entry here. Each reader keeps its index in arrays (data/index.py), so forked
loader workers share its pages, and its samples in the canonical order (data/order.py), so a seed draws the
same batches from every copy of the same images. `open_split` is the one way in: it validates the data
config, finds the split (the synthetic set is generated on first use), and refuses a train/val pair whose
classes differ.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from delving.data.config import DataConfig, DatasetKind, validate
from delving.data.datasets import check_class_lists, existing_root, list_classes, resolve_root
from delving.data.decode import ImageSource
from delving.data.hub_shards import has_split as has_hub_split
from delving.data.hub_shards import open_hub_shards
from delving.data.index import FolderListing, folder_listing
from delving.data.order import epoch_permutation
from delving.data.parquet import ParquetReader, open_parquet
from delving.data.parquet import has_split as has_parquet_split
from delving.data.shards import ShardReader, index_path, open_shards


class SampleReader(Protocol):
    """One split of a copy: samples in the canonical order, `classes[k]` the class of label k."""

    classes: list[str]

    def __len__(self) -> int: ...

    def label(self, i: int) -> int: ...

    def sample_id(self, i: int) -> str: ...

    def source(self, i: int) -> ImageSource: ...

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray: ...


class FolderReader:
    """Samples of a folder data set, in torchvision's ImageFolder order."""

    def __init__(self, listing: FolderListing) -> None:
        self.classes = listing.classes
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
        return epoch_permutation(len(self.labels), seed, epoch)


@dataclass(frozen=True)
class Copy:
    """One way a data set is stored: how its splits are opened and found, and what data.root holds."""

    open: Callable[[Path, str, DataConfig], SampleReader]  # (root, split, cfg): the split's reader
    has_split: Callable[[Path, str], bool]
    layout: str  # what data.root holds, for messages ("... (holding <layout>)")
    # The class list of a split without reading its whole index (the train/val check), where cheaper.
    split_classes: Callable[[Path, str, DataConfig], list[str]] | None = None


def _open_folder(root: Path, split: str, cfg: DataConfig) -> FolderReader:
    return FolderReader(folder_listing(existing_root(root) / split))


FOLDER = Copy(
    _open_folder,
    lambda root, split: (root / split).is_dir(),
    "train/ and val/",
    lambda root, split, cfg: list_classes(root / split),
)
COPIES: dict[DatasetKind, Copy] = {
    DatasetKind.synthetic: FOLDER,
    DatasetKind.imagenet: FOLDER,
    DatasetKind.folder: FOLDER,
    DatasetKind.shards: Copy(
        lambda root, split, cfg: open_shards(root, split),
        lambda root, split: index_path(root, split).is_file(),
        "<split>.json and <split>-NNNNNN.tar shards",
    ),
    DatasetKind.wds: Copy(
        lambda root, split, cfg: open_hub_shards(root, split, cfg.train_split),
        has_hub_split,
        "_info.json and *-<split>-NNNN.tar shards, as the hub publishes them",
    ),
    DatasetKind.parquet: Copy(
        lambda root, split, cfg: open_parquet(root, split, cfg.train_split),
        has_parquet_split,
        "data/<split>-NNNNN-of-NNNNN.parquet files, as the hub publishes them",
    ),
}


def copy_of(cfg: DataConfig) -> Copy:
    return COPIES[DatasetKind(cfg.name)]


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
    """The reader and class list of one split of the configured data set (any copy).
    `fresh_listing`: list a folder split afresh whatever is stored (and store the new listing).

    When `split` is the train or the val split and the other one exists, their class lists must be equal:
    otherwise every val label would index another class (a ClassListError names the first difference).
    """
    validate(cfg)
    root = resolve_root(cfg)
    copy = copy_of(cfg)
    if fresh_listing and copy is FOLDER:
        reader: SampleReader = FolderReader(folder_listing(existing_root(root) / split, fresh=True))
    else:
        reader = copy.open(root, split, cfg)
    classes = reader.classes
    other = {cfg.train_split: cfg.val_split, cfg.val_split: cfg.train_split}.get(split)
    other_classes = None if other is None else split_classes(cfg, root, other)
    if other_classes is not None:
        train_first = split == cfg.train_split
        train, val = (classes, other_classes) if train_first else (other_classes, classes)
        check_class_lists(train, val, f"split {cfg.train_split!r}", f"split {cfg.val_split!r}", root)
    return reader, classes


def split_classes(cfg: DataConfig, root: Path, split: str) -> list[str] | None:
    """The class list of a split, or None where that split is not there (e.g. a val-only copy)."""
    copy = copy_of(cfg)
    if not copy.has_split(root, split):
        return None
    if copy.split_classes is not None:
        return copy.split_classes(root, split, cfg)
    return copy.open(root, split, cfg).classes


def describe_copy(cfg: DataConfig, split: str, reader: SampleReader) -> dict:
    """Which copy a run read (the data contract a checkpoint records): kind, real root, split, sizes."""
    return {
        "kind": DatasetKind(cfg.name).value,
        "root": os.path.realpath(resolve_root(cfg)),
        "split": split,
        "samples": len(reader),
        "classes": len(reader.classes),
    }


def prepare_listings(cfg: DataConfig) -> None:
    """Indexes (and stores) the train and val splits, so that other processes of a launch read the stored
    index instead of walking the tree or scanning the files again; splits that are not there are left alone."""
    root = resolve_root(cfg)
    copy = copy_of(cfg)
    for split in (cfg.train_split, cfg.val_split):
        if copy.has_split(root, split):
            copy.open(root, split, cfg)


__all__ = [
    "COPIES",
    "Copy",
    "FolderReader",
    "ParquetReader",
    "SampleReader",
    "ShardReader",
    "copy_of",
    "describe_copy",
    "listing_block_digests",
    "listing_entries",
    "open_split",
    "prepare_listings",
]
