"""Folder data sets (ImageNet's `train/<wnid>/*.JPEG` layout and any image folder): listing, checks, class names."""

from __future__ import annotations

import os
from pathlib import Path

from delving.data.config import DataConfig, DataConfigError, DatasetKind
from delving.data.imagenet import read_devkit_meta
from delving.errors import UserError

# torchvision's IMG_EXTENSIONS: the same files are listed as by ImageFolder, so class indices and order agree.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# File names for optional class names, looked up in the root: "<wnid> <name...>" per line.
CLASS_NAME_FILES = ("classes.txt", "LOC_synset_mapping.txt")


class DataSetNotFoundError(UserError, FileNotFoundError):
    """A data root, split folder or class folder that is missing, empty or not a folder."""


class ClassListError(UserError, ValueError):
    """Two class lists that must be equal (train vs val, checkpoint vs data set) are not: labels would shift."""


def first_difference(a: list[str], b: list[str]) -> str:
    """Where two lists first differ, for messages: 'first difference at position 3: 'x' vs 'y''."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"first difference at position {i}: {x!r} vs {y!r}"
    return f"one list is a prefix of the other ({len(a)} vs {len(b)} entries)"


def check_class_lists(
    first: list[str], second: list[str], first_name: str, second_name: str, where: str | os.PathLike = ""
) -> None:
    """Refuse two different class lists (a class index would mean another class), naming what differs."""
    if first == second:
        return
    only_first, only_second = sorted(set(first) - set(second)), sorted(set(second) - set(first))
    how = (
        "the same classes in another order"
        if not only_first and not only_second
        else f"{len(only_first)} only in {first_name} {only_first[:5]}, "
        f"{len(only_second)} only in {second_name} {only_second[:5]}"
    )
    raise ClassListError(
        f"{f'{where}: ' if where else ''}the classes of {first_name} and {second_name} differ ({len(first)} vs {len(second)} classes, "
        f"{first_difference(first, second)}; {how}): every label would point at another class"
    )


def list_classes(split_dir: Path) -> list[str]:
    """Sorted sub-folder names (torchvision's order): the class index of a folder is its position here."""
    if not split_dir.is_dir():
        raise DataSetNotFoundError(f"data split folder not found: {split_dir}")
    classes = sorted(
        entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise DataSetNotFoundError(
            f"no class folders in {split_dir} (expected {split_dir}/<class>/<image files>)"
        )
    return classes


def _existing_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataSetNotFoundError(
            f"data root {root} is a file, not a folder: point data.root= at the folder that holds the splits"
        )
    if not root.is_dir():
        raise DataSetNotFoundError(f"data root not found: {root}")
    return root


def list_samples(root: str | os.PathLike, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) for every image of `root/split`, sorted as torchvision's ImageFolder, and the classes."""
    root = _existing_root(root)
    split_dir = root / split
    classes = list_classes(split_dir)
    samples: list[tuple[str, int]] = []
    for index, name in enumerate(classes):
        class_dir = split_dir / name
        found = [
            os.path.join(dirpath, fname)
            for dirpath, _, fnames in sorted(os.walk(class_dir, followlinks=True))
            for fname in sorted(fnames)
            if fname.lower().endswith(IMG_EXTENSIONS) and not fname.startswith(".")
        ]
        if not found:
            raise DataSetNotFoundError(
                f"empty class folder (no {'/'.join(IMG_EXTENSIONS)} files): {class_dir}"
            )
        samples.extend((path, index) for path in found)
    return samples, classes


def check_same_classes(root: str | os.PathLike, train_split: str, val_split: str) -> list[str]:
    """Train and val must index classes identically; a mismatch would silently shift every val label."""
    root = _existing_root(root)
    train, val = list_classes(root / train_split), list_classes(root / val_split)
    check_class_lists(train, val, train_split, val_split, root)
    return train


def resolve_root(cfg: DataConfig) -> Path:
    """The data set's folder; the synthetic set is generated there on first use."""
    if cfg.name == DatasetKind.synthetic:
        from delving.data.synthetic import ensure_synthetic

        return ensure_synthetic(cfg)
    if cfg.root is None:
        raise DataConfigError(f"data={cfg.name.value} needs data.root=/path/to/the/data/set")
    return Path(cfg.root).expanduser()


def read_class_names_file(path: str | os.PathLike) -> dict[str, str]:
    """'<wnid> <name, synonyms>' lines (LOC_synset_mapping.txt style) -> {wnid: name}."""
    names = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        wnid, _, name = line.strip().partition(" ")
        if wnid:
            names[wnid] = name.strip() or wnid
    return names


def class_names(cfg: DataConfig, root: str | os.PathLike, classes: list[str]) -> list[str]:
    """Human-readable names for reports; the folder names where no name source exists (never an error)."""
    root = Path(root)
    candidates = (
        [Path(cfg.class_names_file)] if cfg.class_names_file else [root / f for f in CLASS_NAME_FILES]
    )
    names: dict[str, str] = {}
    for path in candidates:
        if path.is_file():
            names = read_class_names_file(path)
            break
    else:
        devkit = root / "ILSVRC2012_devkit_t12"
        if (devkit / "data" / "meta.mat").is_file():
            names = read_devkit_meta(devkit)[1]
    return [names.get(wnid, wnid) for wnid in classes]
