"""WebDataset shards as the hub publishes ImageNet (timm/imagenet-1k-wds), read in place.

The layout timm's `wds/` reader reads (timm/data/readers/reader_wds.py): tar shards of samples `<key>.jpg`
(also .jpeg/.png/.webp) + `<key>.cls` (the integer label) + optionally `<key>.json` (`filename`, `label`,
`class_name`), and beside them an info file, `_info.json` or `info.json` (or .yaml), with per split
`{"name", "num_samples", "filenames": [shard names], "shard_lengths": [samples per shard]}`. Without an info
file the shards are the folder's `*<split>-*.tar`.

The index (shard, byte offset and size of each image member, label, key, file name) comes from one scan of
the tar headers: nothing is extracted or copied, only the small .cls/.json members are read. It is stored
like the folder listings (data/stored_index.py) and checked against the info file's split sizes. The
samples are sorted into the canonical order (class, then the image's file name: the json's `filename`,
else `<key>.JPEG` as timm names them), so a seed gives the same batches as from the folder layout.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import yaml

from delving.data.class_ids import check_label_range, label_wnids, resolve_classes
from delving.data.datasets import DataSetLayoutError, DataSetNotFoundError, existing_root
from delving.data.order import packed, sorted_index
from delving.data.shards import ShardReader
from delving.data.stored_index import stored_index
from delving.worker_pool import forked_pool

log = logging.getLogger(__name__)

INFO_FILES = ("_info.json", "info.json", "_info.yaml", "info.yaml")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
KEY_EXTENSION = ".JPEG"  # timm's `key_ext`: the original file name is the key plus this
PROGRESS_EVERY_S = 10.0


class InfoFileError(DataSetLayoutError):
    """An info file that cannot be read, or whose split sizes disagree with the shards."""


def read_info(root: Path) -> tuple[Path, dict] | None:
    """(path, parsed) of the copy's info file, or None where it has none."""
    for name in INFO_FILES:
        path = root / name
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
                info = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
            except (OSError, ValueError, yaml.YAMLError) as error:
                raise InfoFileError(f"{path}: unreadable info file ({error}); fix or remove it") from None
            if not isinstance(info, dict):
                raise InfoFileError(f"{path}: not an info file (expected a mapping with 'splits')")
            return path, info
    return None


def split_shards(root: Path, split: str) -> tuple[list[str], list[int] | None]:
    """The split's shard names and, where an info file gives them, the samples each shard must hold."""
    root = existing_root(root)
    found = read_info(root)
    if found is not None and split in (found[1].get("splits") or {}):
        path, info = found
        entry = info["splits"][split]
        try:
            names = [str(name) for name in entry["filenames"]]
            lengths = [int(n) for n in entry["shard_lengths"]]
            total = int(entry["num_samples"])
        except (KeyError, TypeError, ValueError) as error:
            raise InfoFileError(f"{path}: split {split!r} lacks {error} (timm's layout)") from None
        if len(names) != len(lengths) or sum(lengths) != total:
            raise InfoFileError(
                f"{path}: split {split!r} lists {len(names)} shards, {len(lengths)} shard lengths summing to "
                f"{sum(lengths)}, and num_samples={total}: the info file contradicts itself"
            )
        missing = [name for name in names if not (root / name).is_file()]
        if missing:
            raise DataSetNotFoundError(
                f"{root}: {len(missing)} of the {len(names)} shards of split {split!r} that {path.name} lists "
                f"are missing ({missing[0]}, ...): finish the download"
            )
        return names, lengths
    names = sorted(path.name for path in root.glob(f"*{split}-*.tar"))
    if not names:
        splits = sorted((found[1].get("splits") or {}) if found else [])
        raise DataSetNotFoundError(
            f"no shards of split {split!r} in {root} (expected *{split}-NNNN.tar"
            + (f"; its info file lists the splits {splits}" if splits else "")
            + "): check data.root and data.train_split/val_split"
        )
    return names, None


WINDOW = 1 << 14  # bytes read at a time: the headers and the small .cls/.json members of a few samples
BLOCK = 512


class _NotATar(ValueError):
    pass


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes past 8 GiB
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise _NotATar(f"a header field reads {digits[:12]!r}, not a number") from None


def _pax_path(data: bytes) -> str | None:
    """The `path` record of a pax extended header ('<len> path=<name>\n' records)."""
    for record in data.decode("utf-8", "replace").split("\n"):
        _, _, field = record.partition(" ")
        if field.startswith("path="):
            return field[5:]
    return None


def tar_members(path: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, int, int, bytes | None]]:
    """(name, data offset, size, data where `wanted(name)`, else None) of each regular file of a tar, from its
    headers alone: the data of other members is skipped, never read. Reads a window at a time, so the headers
    and small members of a few samples cost one read."""
    with open(path, "rb", buffering=0) as file:
        window, window_at, position = b"", 0, 0
        long_name: str | None = None

        def read(at: int, size: int) -> bytes:
            nonlocal window, window_at
            if not window_at <= at <= at + size <= window_at + len(window):
                window, window_at = os.pread(file.fileno(), max(WINDOW, size), at), at
            return window[at - window_at : at - window_at + size]

        while True:
            header = read(position, BLOCK)
            if len(header) < BLOCK or header == bytes(BLOCK):
                if position == 0:
                    raise _NotATar("empty")
                return  # the end-of-archive blocks (or a file that ends at a member boundary)
            if position == 0 and _octal(header[148:156]) != sum(header) - sum(header[148:156]) + 8 * 32:
                raise _NotATar("bad header checksum")  # a tar's first header, checked once: not a tar at all
            try:
                size = int(header[124:135], 8)  # the usual field: 11 octal digits
            except ValueError:
                size = _octal(header[124:136])
            kind = header[156:157]
            data_at = position + BLOCK
            position = data_at + -(-size // BLOCK) * BLOCK
            if kind in (b"L", b"x"):  # GNU long name, pax extended header: the next member's name
                data = read(data_at, size)
                long_name = data.rstrip(b"\0").decode("utf-8") if kind == b"L" else _pax_path(data)
                continue
            if kind not in (b"0", b"\0", b"7"):
                long_name = None
                continue  # folders, links, global headers
            name = long_name
            if name is None:
                name = header[:100].split(b"\0", 1)[0].decode("utf-8")
                prefix = header[345:500].split(b"\0", 1)[0] if header[257:262] == b"ustar" else b""
                if prefix:
                    name = f"{prefix.decode('utf-8')}/{name}"
            long_name = None
            yield name, data_at, size, read(data_at, size) if wanted(name) else None


def _is_small_member(name: str) -> bool:
    return name.endswith((".cls", ".json"))


def _scan_shard(
    path: Path, shard_no: int
) -> tuple[dict[str, list], list[bytes], list[bytes], dict[int, str]]:
    """(members in tar order: shard_of, offsets, sizes, labels; keys; file names; the json's class name of
    each label) of one shard."""
    images: dict[str, tuple[int, int]] = {}
    labels: dict[str, int] = {}
    filenames: dict[str, str] = {}
    named: dict[str, str] = {}
    try:
        for name, offset, size, data in tar_members(path, _is_small_member):
            directory, _, base = name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not dot:
                continue
            key = f"{directory}/{stem}" if directory else stem
            ext = ext.lower()
            if ext in IMAGE_EXTENSIONS:
                images[key] = (offset, size)
            elif ext == "cls" and data is not None:
                labels[key] = int(data.strip())
            elif ext == "json" and data is not None:
                meta = json.loads(data)
                if "filename" in meta:
                    filenames[key] = str(meta["filename"])
                if "label" in meta:
                    labels.setdefault(key, int(meta["label"]))
                if "class_name" in meta:
                    named[key] = str(meta["class_name"])
    except (_NotATar, UnicodeDecodeError) as error:
        raise DataSetLayoutError(f"{path}: not a tar shard ({error}); re-download it") from None
    except ValueError as error:
        raise DataSetLayoutError(f"{path}: a .cls or .json member is unreadable ({error})") from None
    unlabelled = [key for key in images if key not in labels]
    if unlabelled:
        raise DataSetLayoutError(
            f"{path}: {len(unlabelled)} images without a .cls label (first {unlabelled[0]!r}): not a "
            "classification shard"
        )
    keys = list(images)  # tar order: reading a shard front to back stays sequential
    class_names: dict[int, str] = {}
    for key, name in named.items():
        if class_names.setdefault(labels[key], name) != name:
            raise DataSetLayoutError(
                f"{path}: label {labels[key]} is {class_names[labels[key]]!r} and {name!r} ({key}.json): the labels "
                "disagree with the class names the shards carry"
            )
    return (
        {
            "shard_of": [shard_no] * len(keys),
            "offsets": [images[k][0] for k in keys],
            "sizes": [images[k][1] for k in keys],
            "labels": [labels[k] for k in keys],
        },
        [k.encode() for k in keys],
        [filenames.get(k, k.rpartition("/")[2] + KEY_EXTENSION).encode() for k in keys],
        class_names,
    )


def _scan_task(task: tuple[Path, int]) -> tuple[dict[str, list], list[bytes], list[bytes], dict[int, str]]:
    return _scan_shard(*task)


def scan_processes(shards: int) -> int:
    """Processes for the header scan: the shards are independent (at most 16, one per core)."""
    return max(1, min(16, len(os.sched_getaffinity(0)), shards))


def scan_shards(root: Path, split: str, names: list[str], lengths: list[int] | None):
    """Builds the index of the split's shards from their tar headers, shards in parallel processes (progress
    lines on the log)."""
    columns: dict[str, list] = {"shard_of": [], "offsets": [], "sizes": [], "labels": []}
    keys: list[bytes] = []
    files: list[bytes] = []
    class_names: dict[int, tuple[str, str]] = {}  # label -> (name, the shard that named it)
    started = last = time.monotonic()
    tasks = [(root / name, shard_no) for shard_no, name in enumerate(names)]
    processes = scan_processes(len(tasks))
    with forked_pool(processes) if processes > 1 else nullcontext() as pool:
        results = pool.imap(_scan_task, tasks, chunksize=4) if pool else map(_scan_task, tasks)
        for shard_no, (members, shard_keys, shard_files, shard_classes) in enumerate(results):
            name = names[shard_no]
            for label, class_name in shard_classes.items():
                first = class_names.setdefault(label, (class_name, name))
                if first[0] != class_name:
                    raise DataSetLayoutError(
                        f"{root}: label {label} is {first[0]!r} in {first[1]} but {class_name!r} in {name}: the "
                        "labels disagree with the class names the shards carry"
                    )
            if lengths is not None and len(shard_keys) != lengths[shard_no]:
                raise InfoFileError(
                    f"{root / name}: {len(shard_keys)} samples, but the info file says {lengths[shard_no]}: a "
                    "truncated or replaced shard; re-download it"
                )
            for column, values in members.items():
                columns[column].extend(values)
            keys.extend(shard_keys)
            files.extend(shard_files)
            if time.monotonic() - last > PROGRESS_EVERY_S:
                last = time.monotonic()
                log.info("indexing %s: %d/%d shards, %d samples, %.0f s", split, shard_no + 1, len(names),
                         len(keys), last - started)  # fmt: skip
    if not keys:
        raise DataSetNotFoundError(f"the shards of split {split!r} in {root} hold no images")
    arrays = {column: np.asarray(values, dtype=np.int64) for column, values in columns.items()}
    arrays = sorted_index(arrays, {"key": keys, "name": files}, "name")
    count = int(arrays["labels"].max()) + 1 if arrays["labels"].min() >= 0 else 0
    check_label_range(arrays["labels"], max(count, 1), f"{root} split {split!r}")
    wnids = label_wnids(arrays["labels"], packed(arrays, "name"), count, f"{root} split {split!r}")
    log.info("indexed %s: %d samples in %d shards in %.1f s", split, len(keys), len(names),
             time.monotonic() - started)  # fmt: skip
    carried = [class_names.get(k, ("",))[0] for k in range(count)] if class_names else None
    return {"label_wnids": wnids, "class_names": carried}, arrays


def open_hub_shards(root: str | os.PathLike, split: str, train_split: str) -> ShardReader:
    """The reader of one split of a hub-style shard folder, in the canonical order."""
    root = Path(root)
    names, lengths = split_shards(root, split)
    facts, arrays = stored_index(
        "wds", [root / name for name in names], lambda: scan_shards(root, split, names, lengths)
    )
    where = f"{root} split {split!r}"

    def train_classes() -> list[str] | None:
        if split == train_split or not has_split(root, train_split):
            return None
        return open_hub_shards(root, train_split, train_split).classes

    classes = resolve_classes(list(facts["label_wnids"]), root, where, train_classes)
    members = {column: arrays[column] for column in ("shard_of", "offsets", "sizes", "labels")}
    return ShardReader(root=root, files=names, keys=packed(arrays, "key"), classes=classes,
                       class_names=facts.get("class_names"), **members)  # fmt: skip


def has_split(root: str | os.PathLike, split: str) -> bool:
    try:
        split_shards(Path(root), split)
    except DataSetNotFoundError:
        return False
    return True
