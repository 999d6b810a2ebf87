"""WebDataset tar shards: writing them from a folder data set, and reading members by offset.

Each shard is a plain WebDataset tar (`<key>.jpg` with the original file bytes, `<key>.cls` with the class
index), readable by any WebDataset pipeline. Next to the shards, `<split>.json` records the classes and, per
shard, each member's byte offset and label: with it every rank can compute the same global order and read any
sample directly, which keeps step counts identical on all ranks and makes mid-epoch resume exact. The
reader keeps the samples in the canonical order (data/order.py: class, then key; the keys are the samples'
positions in the folder listing, so that is the folder's order), and an epoch draws the same permutation of
it as every other copy: a seed trains on the same batches from the shards as from the folder (the reads jump
between shards; on a network file system the page cache or a local copy keeps that cheap).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds

from delving.data.datasets import DataSetNotFoundError, existing_root, walk_split
from delving.data.index import PackedStrings
from delving.data.order import canonical_order, epoch_permutation

INDEX_VERSION = 1


def index_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / f"{split}.json"


def write_shards(
    source_root: str | os.PathLike, split: str, out_root: str | os.PathLike, max_samples: int, seed: int = 0
) -> Path:
    """Writes `source_root/split` as shards of at most `max_samples` files in a shuffled order (so that the
    shard-local shuffle at training time mixes classes) and the index; returns the index path."""
    split_dir = existing_root(source_root) / split
    walk = walk_split(split_dir)
    classes, base = walk.classes, os.fsencode(split_dir)
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    index = index_path(out_root, split)
    if index.exists():
        raise FileExistsError(
            f"{index} exists: shards for split {split!r} were already written to {out_root}"
        )
    order = np.random.default_rng(seed).permutation(len(walk.paths))
    shards = []
    for shard_no, start in enumerate(range(0, len(walk.paths), max_samples)):
        name = f"{split}-{shard_no:06d}.tar"
        with wds.TarWriter(str(out_root / name)) as writer:
            for position in order[start : start + max_samples]:
                path, label = os.path.join(base, walk.paths[position]), int(walk.labels[position])
                writer.write(
                    {
                        "__key__": f"{int(position):08d}",
                        "jpg": Path(os.fsdecode(path)).read_bytes(),
                        "cls": label,
                    }
                )
        shards.append({"file": name, **_member_table(out_root / name)})
    tmp = index.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps({"version": INDEX_VERSION, "classes": classes, "shards": shards}), encoding="utf-8"
    )
    os.replace(tmp, index)  # the index appears last: its presence means the split is complete
    return index


def _member_table(tar_path: Path) -> dict[str, list]:
    """Offsets of the image members and their labels, read back from the tar written."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext == "cls":
                labels[key] = int(tar.extractfile(member).read().decode())
            elif ext == "jpg":
                images[key] = (member.offset_data, member.size)
    keys = list(images)  # tar order, so reading a shard front to back is sequential
    return {
        "keys": keys,
        "offsets": [images[k][0] for k in keys],
        "sizes": [images[k][1] for k in keys],
        "labels": [labels[k] for k in keys],
    }


def read_index(root: str | os.PathLike, split: str) -> dict:
    """The parsed `<split>.json` of a shard folder (classes, and per shard its members' offsets and labels)."""
    index = index_path(root, split)
    if not index.is_file():
        raise DataSetNotFoundError(
            f"shard index not found: {index} (write shards with scripts/make_shards.py)"
        )
    return json.loads(index.read_text(encoding="utf-8"))


@dataclass
class ShardReader:
    """Random access to the samples of one split's shards (picklable: file handles are opened per process)."""

    root: Path
    files: list[str]
    shard_of: np.ndarray  # per sample: its shard number
    offsets: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    keys: PackedStrings
    classes: list[str]
    class_names: list[str] | None = None  # as the shards carry them (the hub's `.json` class_name)

    @classmethod
    def in_canonical_order(
        cls,
        root: Path,
        files: list[str],
        members: dict[str, np.ndarray],
        keys: PackedStrings,
        names: PackedStrings,
        classes: list[str],
    ) -> ShardReader:
        """The reader of members given in storage order (`members`: shard_of, offsets, sizes, labels), sorted
        by (label, name): `names` are the images' file names, or anything sorting as they do."""
        order = canonical_order(members["labels"], names)
        picked = {name: np.ascontiguousarray(array[order]) for name, array in members.items()}
        key_list = [keys.raw(int(i)) for i in order]
        return cls(root=root, files=files, keys=PackedStrings.from_bytes(key_list), classes=classes, **picked)

    @classmethod
    def open(cls, root: str | os.PathLike, split: str) -> ShardReader:
        meta = read_index(root, split)
        shards = meta["shards"]
        keys = PackedStrings.from_strings([k for s in shards for k in s["keys"]])
        members = {
            "shard_of": np.concatenate(
                [np.full(len(s["keys"]), n, dtype=np.int64) for n, s in enumerate(shards)]
            ),
            "offsets": np.concatenate([np.asarray(s["offsets"], dtype=np.int64) for s in shards]),
            "sizes": np.concatenate([np.asarray(s["sizes"], dtype=np.int64) for s in shards]),
            "labels": np.concatenate([np.asarray(s["labels"], dtype=np.int64) for s in shards]),
        }
        # The keys are the samples' positions in the folder listing (fixed width): they sort as its file names.
        return cls.in_canonical_order(
            Path(root), [s["file"] for s in shards], members, keys, keys, list(meta["classes"])
        )

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def sample_id(self, i: int) -> str:
        """The member's key (its position in the listing the shards were written from), unique in the split."""
        return self.keys[i]

    def source(self, i: int) -> io.BytesIO:
        name = self.files[self.shard_of[i]]
        with open(self.root / name, "rb") as f:
            f.seek(int(self.offsets[i]))
            data = io.BytesIO(f.read(int(self.sizes[i])))
        data.name = f"{self.root / name}:{self.keys[i]}.jpg"
        return data

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        return epoch_permutation(len(self.labels), seed, epoch)


_OPENED: dict[
    str, tuple[tuple[int, int], ShardReader]
] = {}  # real path of the index -> (size, mtime), reader


def open_shards(root: str | os.PathLike, split: str) -> ShardReader:
    """The split's ShardReader, parsed once per process (preflight, the loaders and the class checks share it)
    while `<split>.json` is unchanged (same size and modification time)."""
    path = index_path(root, split)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return ShardReader.open(root, split)  # raises the one-line "shard index not found"
    real, version = os.path.realpath(path), (stat.st_size, stat.st_mtime_ns)
    if real not in _OPENED or _OPENED[real][0] != version:
        _OPENED[real] = version, ShardReader.open(root, split)
    return _OPENED[real][1]
