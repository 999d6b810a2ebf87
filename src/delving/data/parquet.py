"""Parquet files in the hub's ImageNet-1k schema, read in place with pyarrow.

The layout `datasets` publishes: `<root>/data/<split>-NNNNN-of-NNNNN.parquet` (also `<root>/<split>-*.parquet`
or `<root>/<split>/*.parquet`), each with a struct column `image` of {bytes, path} and an integer `label`, the
class names in the schema's `huggingface` metadata (`info.features.label.names`). The hub's train and
validation file names carry the wnid (`n01440764_10026_n01440764.JPEG`), which checks the labels' order.

The index (file, row group, row in the group, label, image path) is read once from the files' metadata and
their `label` and `image.path` columns (not the image bytes), stored like the folder listings, and sorted
into the canonical order (class, then file name). A sample's bytes are read from its row group's image
column; each process keeps its last row group, so reading a row group's samples in a row costs one read.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from delving.data.class_ids import check_label_range, label_wnids, resolve_classes
from delving.data.datasets import DataSetLayoutError, DataSetNotFoundError, existing_root
from delving.data.index import PackedStrings
from delving.data.order import epoch_permutation, packed, sorted_index
from delving.data.stored_index import stored_index

# pyarrow is imported where a parquet file is read: at the top it would cost every launch 0.4 s, parquet or not.
if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

# The hub appended the wnid to ImageNet's file names (`n01440764_10026_n01440764.JPEG`): the canonical order
# sorts by the original name, as the folder layout does (`_1_` and `_10_` sort unlike `_1.` and `_10.`).
_FOLDERS = r"^.*/"
_APPENDED_WNID = r"^(.+)_n\d{8}(\.[A-Za-z]+)$"


def original_names(paths: pa.Array) -> list[bytes]:
    """The images' ImageNet file names: base names, without a wnid the hub appended (vectorised: RE2)."""
    import pyarrow.compute as pc

    names = pc.replace_substring_regex(paths, pattern=_FOLDERS, replacement="")
    names = pc.replace_substring_regex(names, pattern=_APPENDED_WNID, replacement=r"\1\2")
    return [name.encode() for name in names.to_pylist()]


def split_files(root: Path, split: str) -> list[Path]:
    """The split's parquet files, in name order."""
    root = existing_root(root)
    for pattern in (f"data/{split}-*.parquet", f"{split}-*.parquet", f"{split}/*.parquet"):
        files = sorted(root.glob(pattern))
        if files:
            return files
    raise DataSetNotFoundError(
        f"no parquet files of split {split!r} in {root} (expected data/{split}-NNNNN-of-NNNNN.parquet as the "
        "hub lays them out): check data.root and data.train_split/val_split"
    )


def carried_class_names(schema: pa.Schema) -> list[str] | None:
    """The label names in the `huggingface` schema metadata (a `datasets` ClassLabel), if any."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        label = json.loads(raw)["info"]["features"]["label"]
    except (ValueError, KeyError, TypeError):
        return None
    names = label.get("names") if isinstance(label, dict) else None
    return [str(name) for name in names] if isinstance(names, list) else None


def _check_schema(path: Path, schema: pa.Schema) -> None:
    import pyarrow as pa

    image = schema.field("image").type if "image" in schema.names else None
    if image is None or not pa.types.is_struct(image) or image.get_field_index("bytes") < 0:
        raise DataSetLayoutError(
            f"{path}: no `image` column of {{bytes, path}} (columns: {schema.names}): not an image parquet file "
            "in the hub's ImageNet schema"
        )
    if "label" not in schema.names or not pa.types.is_integer(schema.field("label").type):
        raise DataSetLayoutError(f"{path}: no integer `label` column (columns: {schema.names})")


def _file_index(path: Path, file_no: int) -> tuple[dict[str, np.ndarray], list[bytes], list[str] | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataSetLayoutError(f"{path}: not a parquet file ({error}); re-download it") from None
    schema = parquet.schema_arrow
    _check_schema(path, schema)
    has_path = schema.field("image").type.get_field_index("path") >= 0
    table = parquet.read(columns=["label", "image.path"] if has_path else ["label"])
    labels = table.column("label").to_numpy(zero_copy_only=False).astype(np.int64)
    paths = table.column("image").combine_chunks().field("path") if has_path else None
    if paths is not None and paths.null_count == 0:
        names = original_names(paths)
    else:  # no file names: the row's place sorts the samples of a class
        names = [f"{path.name}:{i:09d}".encode() for i in range(len(labels))]
    rows = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    arrays = {
        "file_of": np.full(len(labels), file_no, dtype=np.int64),
        "row_group": np.repeat(np.arange(len(rows), dtype=np.int64), rows),
        "row": np.concatenate([np.arange(n, dtype=np.int64) for n in rows])
        if rows
        else np.zeros(0, np.int64),
        "labels": labels,
    }
    return arrays, names, carried_class_names(schema)


def build_index(root: Path, split: str, files: list[Path]):
    """Reads the files' metadata and label/path columns into arrays (progress on the log)."""
    started = time.monotonic()
    parts, names, carried = [], [], None
    for file_no, path in enumerate(files):
        arrays, file_names, file_classes = _file_index(path, file_no)
        if carried is not None and file_classes is not None and file_classes != carried:
            raise DataSetLayoutError(f"{path}: its class names differ from {files[0].name}'s: mixed copies")
        carried = carried or file_classes
        parts.append(arrays)
        names.extend(file_names)
    arrays = {column: np.concatenate([part[column] for part in parts]) for column in parts[0]}
    if not len(arrays["labels"]):
        raise DataSetNotFoundError(f"the parquet files of split {split!r} in {root} hold no rows")
    where = f"{root} split {split!r}"
    count = len(carried) if carried else int(arrays["labels"].max()) + 1
    check_label_range(arrays["labels"], max(count, 1), where)
    arrays = sorted_index(arrays, {"name": names}, "name")
    facts = {"label_wnids": label_wnids(arrays["labels"], packed(arrays, "name"), count, where),
             "class_names": carried}  # fmt: skip
    log.info("indexed %s: %d rows in %d parquet files in %.1f s", split, len(names), len(files),
             time.monotonic() - started)  # fmt: skip
    return facts, arrays


@dataclass
class ParquetReader:
    """Random access to one split's rows (picklable: each process opens its own files)."""

    root: Path
    files: list[str]
    file_of: np.ndarray
    row_group: np.ndarray
    row: np.ndarray
    labels: np.ndarray
    names: PackedStrings
    classes: list[str]
    class_names: list[str] | None = None  # as the copy carries them (`huggingface` metadata)
    _group: tuple[int, int, pa.Array] | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_group": None}

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def sample_id(self, i: int) -> str:
        return self.names[i]

    def _images(self, file_no: int, group: int) -> pa.Array:
        if self._group is None or self._group[:2] != (file_no, group):
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(self.root / self.files[file_no], memory_map=True)
            column = parquet.read_row_group(group, columns=["image.bytes"]).column("image")
            self._group = file_no, group, column.combine_chunks().field("bytes")
        return self._group[2]

    def source(self, i: int) -> io.BytesIO:
        file_no, group, row = int(self.file_of[i]), int(self.row_group[i]), int(self.row[i])
        data = io.BytesIO(self._images(file_no, group)[row].as_py() or b"")
        data.name = f"{self.root / self.files[file_no]}:{group}/{row}:{self.names[i]}"
        return data

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        return epoch_permutation(len(self.labels), seed, epoch)


def open_parquet(root: str | os.PathLike, split: str, train_split: str) -> ParquetReader:
    """The reader of one split of a parquet copy, in the canonical order."""
    root = Path(root)
    files = split_files(root, split)
    facts, arrays = stored_index("parquet", files, lambda: build_index(root, split, files))

    def train_classes() -> list[str] | None:
        if split == train_split or not has_split(root, train_split):
            return None
        return open_parquet(root, train_split, train_split).classes

    classes = resolve_classes(list(facts["label_wnids"]), root, f"{root} split {split!r}", train_classes)
    return ParquetReader(
        root=root,
        files=[os.path.relpath(path, root) for path in files],
        names=packed(arrays, "name"),
        classes=classes,
        class_names=facts["class_names"],
        **{column: arrays[column] for column in ("file_of", "row_group", "row", "labels")},
    )


def has_split(root: str | os.PathLike, split: str) -> bool:
    try:
        split_files(Path(root), split)
    except DataSetNotFoundError:
        return False
    return True
