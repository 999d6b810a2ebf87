"""A data set checked before a run, in a second: its values, its folders or shard indexes, its classes, one
global batch of training images, its mean image, and room for the synthetic set.

What a launch's preflight asks of the data room. It reads folder names, the file names of the first class
folders and shard indexes only (no image, no full listing) and never generates the synthetic set (a few of
its images are rendered in memory to estimate its size); each refusal is a ConfigError naming the key. The
hub's copies (data=wds, data=parquet) are indexed here, once (the index is stored; the loaders reuse it):
their refusals (no shards, a shard that is not a tar, a parquet file without an image column, labels out of
range or against the class names) come before the run folder exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from delving.data.config import DataConfig, DatasetKind, Normalize, validate
from delving.data.datasets import IMG_EXTENSIONS, check_class_lists, check_same_classes
from delving.data.normalize import MEAN_IMAGE_FILE
from delving.data.readers import FOLDER, copy_of, split_classes
from delving.data.shards import index_path, open_shards
from delving.data.synthetic import (
    CACHE_ENV,
    COMPLETE_MARKER,
    MAX_CLASSES,
    SyntheticParams,
    default_root,
    estimated_bytes,
)
from delving.errors import ConfigError, UserError, require_at_least
from delving.io import free_bytes, unwritable_place

DEMO_HINT = "or try delving-train experiment=demo (a small net on generated synthetic data, minutes on a CPU)"


def checked_data_values(data: DataConfig) -> DataConfig:
    """data/config.validate, and the loader's and the synthetic set's values (a ConfigError naming the key)."""
    try:
        validate(data)
    except UserError:
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None
    require_at_least("data.num_workers", data.num_workers, 0, "give 0 (load in the main process) or more")
    require_at_least("data.prefetch_factor", data.prefetch_factor, 1, "give 1 or more")
    if data.name == DatasetKind.synthetic:
        if not 1 <= data.synthetic_classes <= MAX_CLASSES:
            raise ConfigError(
                f"data.synthetic_classes={data.synthetic_classes}: give a count in [1, {MAX_CLASSES}]"
            )
        for key in ("synthetic_train_per_class", "synthetic_val_per_class", "synthetic_min_size"):
            require_at_least(f"data.{key}", getattr(data, key), 1, "give 1 or more")
        if data.synthetic_max_size < data.synthetic_min_size:
            raise ConfigError(
                f"data.synthetic_max_size={data.synthetic_max_size} is below data.synthetic_min_size="
                f"{data.synthetic_min_size}: give max >= min"
            )
    return data


def _existing_folder(path: Path, key: str, what: str) -> None:
    if path.is_file():
        raise ConfigError(f"{key}={path} is a file, not a folder: point {key}= at {what}")
    if not path.is_dir():
        raise ConfigError(f"{key}={path}: no such folder; point {key}= at {what}, {DEMO_HINT}")


def check_data_set(data: DataConfig) -> tuple[list[str] | None, int | None]:
    """The class list (None for the synthetic set: only its count is known before it is generated) and the
    number of training images where it is known without listing every file."""
    if data.name == DatasetKind.synthetic:
        if data.root is not None and Path(data.root).expanduser().is_file():
            raise ConfigError(
                f"data.root={data.root} is a file, not a folder: point it at a folder, or leave it out"
            )
        check_synthetic_place(data)
        return None, data.synthetic_classes * data.synthetic_train_per_class
    root = Path(data.root).expanduser()  # type: ignore[arg-type]
    kind = data.name.value
    if data.name == DatasetKind.shards:
        _existing_folder(root, "data.root", "the folder of the shards (<split>.json, <split>-NNNNNN.tar)")
        train, count = _shard_index(root, data.train_split, "data.train_split")
        val, _ = _shard_index(root, data.val_split, "data.val_split")
        if train != val:
            raise ConfigError(
                f"data.root={root}: the shards of {data.train_split} and {data.val_split} list different classes "
                f"({len(train)} vs {len(val)}): write both splits' shards from one data set"
            )
        return train, count
    if copy_of(data) is not FOLDER:  # any other copy behind the readers' seam: its reader checks it
        return _indexed_copy(data, root)
    _existing_folder(root, "data.root", f"the folder that holds {data.train_split}/ and {data.val_split}/")
    for key, split in (("data.train_split", data.train_split), ("data.val_split", data.val_split)):
        folder = root / split
        if folder.is_file():
            raise ConfigError(f"{key}={split}: {folder} is a file, not a folder of class folders")
        if not folder.is_dir():
            raise ConfigError(
                f"data={kind} data.root={root} has no {split}/ folder ({key}={split}): expected "
                f"{folder}/<class>/<images>; check data.root"
            )
    try:
        return check_same_classes(root, data.train_split, data.val_split), None
    except UserError:
        raise
    except (OSError, ValueError) as error:
        raise ConfigError(f"data.root={root}: {error}") from None


def _indexed_copy(data: DataConfig, root: Path) -> tuple[list[str], int]:
    """A copy behind the readers' seam (data/readers.py `COPIES`): both splits opened (indexed once, stored)."""
    copy = copy_of(data)
    _existing_folder(root, "data.root", f"the folder holding {copy.layout}")
    try:
        train = copy.open(root, data.train_split, data)
        val = split_classes(data, root, data.val_split)
        if val is None:
            raise ConfigError(
                f"data={data.name.value} data.root={root} has no split {data.val_split!r} (data.val_split="
                f"{data.val_split}): the validation split the trainer scores each epoch; check data.val_split"
            )
        check_class_lists(
            train.classes, val, f"split {data.train_split!r}", f"split {data.val_split!r}", root
        )
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"data.root={root}: {error}") from None
    return list(train.classes), len(train)


def _shard_index(root: Path, split: str, key: str) -> tuple[list[str], int]:
    path = index_path(root, split)
    if not path.is_file():
        raise ConfigError(
            f"data.root={root} has no shard index {path.name} ({key}={split}): write the shards with "
            "scripts/make_shards.py, or check data.root"
        )
    try:
        reader = open_shards(root, split)  # parsed once per process: the loaders reuse it
        return [str(c) for c in reader.classes], len(reader)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"{path}: not a shard index of scripts/make_shards.py ({error!r}); rewrite the shards"
        ) from None


def _synthetic_root(data: DataConfig) -> Path:
    """Where the synthetic set is (or will be generated), without generating it."""
    return Path(data.root).expanduser() if data.root else default_root(SyntheticParams.from_config(data))


def check_synthetic_place(data: DataConfig) -> None:
    """The synthetic set is generated on first use: its folder (DELVING_DATA_CACHE) must take it, in
    permissions and in space (an estimate from a few rendered images, in whole file-system blocks)."""
    params = SyntheticParams.from_config(data)
    root = _synthetic_root(data)
    if (root / COMPLETE_MARKER).is_file():
        return  # generated already: only read
    cache = os.environ.get(CACHE_ENV)
    fix = (
        "point data.root= at a folder you can write" if data.root
        else f"set {CACHE_ENV} (now {cache or 'unset'}) to a folder you can write"
    )  # fmt: skip
    why = unwritable_place(root.parent)
    if why is not None:
        raise ConfigError(f"data=synthetic is generated on first use into {root}, but {why}: {fix}")
    free, block = free_bytes(root.parent)
    needed = estimated_bytes(params, block)
    if free is not None and needed > free:
        raise ConfigError(
            f"data=synthetic is generated on first use into {root}, which needs about {needed / 1e6:.1f} MB, but "
            f"its disk has {free / 1e6:.1f} MB free: free some space, or {fix.replace('you can write', 'with room')}"
        )


def count_training_images(data: DataConfig, classes: list[str], enough: int) -> int:
    """The image files of a folder data set's training split, counted up to `enough` (a first few class
    folders hold a global batch: no full listing); a class folder that cannot be read counts as empty (the
    listing names it)."""
    split_dir = Path(data.root).expanduser() / data.train_split  # type: ignore[arg-type]
    count = 0
    for name in classes:
        try:
            with os.scandir(split_dir / name) as entries:
                for entry in entries:
                    if not entry.name.startswith(".") and entry.name.lower().endswith(IMG_EXTENSIONS):
                        count += 1
                        if count >= enough:
                            return count
        except OSError:
            continue
    return count


def check_mean_image(data: DataConfig) -> None:
    """data.normalize=mean_image: its file exists and holds an H x W x 3 array (read as a memory map)."""
    if data.normalize != Normalize.mean_image:
        return
    if data.mean_image:
        path, key = Path(data.mean_image).expanduser(), f"data.mean_image={data.mean_image}"
    else:
        root = _synthetic_root(data) if data.name == DatasetKind.synthetic else Path(data.root).expanduser()  # type: ignore[arg-type]
        path, key = root / MEAN_IMAGE_FILE, "data.normalize=mean_image"
    fix = (
        "compute it first (python scripts/compute_mean_image.py with the same data=, data.root=), or give "
        "data.mean_image=FILE, or another data.normalize="
    )
    if not path.is_file():
        raise ConfigError(f"{key} needs the mean image {path}, which does not exist: {fix}")
    try:
        mean = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise ConfigError(f"{key}: {path} is not a readable .npy array ({error}): {fix}") from None
    if mean.ndim != 3 or mean.shape[2] != 3:
        raise ConfigError(f"{key}: {path} holds shape {mean.shape}, not an H x W x 3 image: {fix}")
