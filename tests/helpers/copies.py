"""One tiny ImageNet-shaped data set in every layout delving reads, built from the same JPEG files (no tests
here): the folder layout, our shards (scripts/make_shards.py), WebDataset shards as the hub publishes them
(timm/imagenet-1k-wds: `_info.json`, `<key>.jpg/.cls/.json`, shuffled across shards, unnamed val wnids) and
parquet as the hub publishes it (`image` {bytes, path}, `label`, the `huggingface` schema metadata,
wnids appended to the file names, shuffled rows in small row groups)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from delving.data.datasets import list_samples
from delving.data.shards import write_shards
from helpers.data import write_jpeg

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
CLASS_NAMES = ["tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark", "tiger shark"]


def make_imagenet_folder(root: Path, train_per_class: int = 12, val_per_class: int = 2) -> Path:
    """root/train/<wnid>/<wnid>_<i>.JPEG (i = 1, 2, ..., 11, 12: `_1` and `_10` test the name order) and
    root/val/<wnid>/ILSVRC2012_val_<n>.JPEG, as ImageNet names its files."""
    val_no = 0
    for k, wnid in enumerate(WNIDS):
        for i in range(1, train_per_class + 1):
            write_jpeg(
                root / "train" / wnid / f"{wnid}_{i}.JPEG", 36 + i % 3 * 4, 30 + i % 2 * 6, k * 100 + i
            )
        for _ in range(val_per_class):
            val_no += 1
            write_jpeg(root / "val" / wnid / f"ILSVRC2012_val_{val_no:08d}.JPEG", 34, 30, 10_000 + val_no)
    return root


def _samples(folder: Path, split: str, seed: int) -> list[tuple[str, bytes, int]]:
    """(file name, bytes, label) of a split, shuffled: the hub's copies store another order than the folder."""
    samples, _ = list_samples(folder, split)
    order = np.random.default_rng(seed).permutation(len(samples))
    return [(Path(samples[i][0]).name, Path(samples[i][0]).read_bytes(), samples[i][1]) for i in order]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def make_hub_shards(folder: Path, out: Path, per_shard: int = 12) -> Path:
    """timm/imagenet-1k-wds's layout: imagenet1k-{train,validation}-NNNN.tar and _info.json."""
    out.mkdir(parents=True)
    splits = {}
    for split, hub_split in (("train", "train"), ("val", "validation")):
        samples = _samples(folder, split, seed=len(split))
        names, lengths = [], []
        for n, start in enumerate(range(0, len(samples), per_shard)):
            name = f"imagenet1k-{hub_split}-{n:04d}.tar"
            chunk = samples[start : start + per_shard]
            with tarfile.open(out / name, "w", format=tarfile.GNU_FORMAT) as tar:
                for file_name, data, label in chunk:
                    key = file_name.rsplit(".", 1)[0]
                    meta = {"filename": file_name, "label": label, "class_name": CLASS_NAMES[label]}
                    _add(tar, f"{key}.jpg", data)
                    _add(tar, f"{key}.cls", str(label).encode())
                    _add(tar, f"{key}.json", json.dumps(meta).encode())
            names.append(name)
            lengths.append(len(chunk))
        splits[hub_split] = {"name": hub_split, "num_samples": len(samples), "filenames": names,
                             "shard_lengths": lengths}  # fmt: skip
    (out / "_info.json").write_text(json.dumps({"name": "imagenet-1k", "splits": splits}))
    return out


HUB_SCHEMA = pa.schema(
    [
        pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
        pa.field("label", pa.int64()),
    ]
)


def hub_metadata(names: list[str]) -> dict[bytes, bytes]:
    """The `huggingface` schema metadata `datasets` writes: the features, the label's class names."""
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_hub_parquet(
    path: Path, rows: list[tuple[str, bytes, int]], row_group: int, names=CLASS_NAMES
) -> None:
    table = pa.table(
        {
            "image": [{"bytes": data, "path": file_name} for file_name, data, _ in rows],
            "label": [label for _, _, label in rows],
        },
        schema=HUB_SCHEMA.with_metadata(hub_metadata(list(names))),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group)


def make_hub_parquet(folder: Path, out: Path, files: int = 2, row_group: int = 5) -> Path:
    """The hub's ImageNet-1k parquet: data/{train,validation}-NNNNN-of-NNNNN.parquet, wnids appended to names."""
    for split, hub_split in (("train", "train"), ("val", "validation")):
        samples = _samples(folder, split, seed=7 + len(split))
        rows = [(f"{name[:-5]}_{Path(WNIDS[label]).name}.JPEG", data, label) for name, data, label in samples]
        per_file = -(-len(rows) // files)
        for n in range(files):
            write_hub_parquet(out / "data" / f"{hub_split}-{n:05d}-of-{files:05d}.parquet",
                              rows[n * per_file : (n + 1) * per_file], row_group)  # fmt: skip
    return out


def make_every_copy(root: Path) -> dict[str, Path]:
    """The same images as a folder, our shards, the hub's shards and the hub's parquet."""
    folder = make_imagenet_folder(root / "folder")
    for split in ("train", "val"):
        write_shards(folder, split, root / "shards", max_samples=9, seed=3)
    return {
        "folder": folder,
        "shards": root / "shards",
        "wds": make_hub_shards(folder, root / "wds"),
        "parquet": make_hub_parquet(folder, root / "parquet"),
    }
