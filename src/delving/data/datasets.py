"""Folder data sets (ImageNet's `train/<wnid>/*.JPEG` layout and any image folder): listing, checks, class names."""

from __future__ import annotations

import os
from pathlib import Path

from delving.data.config import DataConfig, DatasetKind
from delving.data.imagenet import read_devkit_meta

# torchvision's IMG_EXTENSIONS: the same files are listed as by ImageFolder, so class indices and order agree.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# File names for optional class names, looked up in the root: "<wnid> <name...>" per line.
CLASS_NAME_FILES = ("classes.txt", "LOC_synset_mapping.txt")


def list_classes(split_dir: Path) -> list[str]:
    """Sorted sub-folder names (torchvision's order): the class index of a folder is its position here."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"data split folder not found: {split_dir}")
    classes = sorted(
        entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise FileNotFoundError(
            f"no class folders in {split_dir} (expected {split_dir}/<class>/<image files>)"
        )
    return classes


def _existing_root(root: str | os.PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
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
            raise FileNotFoundError(f"empty class folder (no {'/'.join(IMG_EXTENSIONS)} files): {class_dir}")
        samples.extend((path, index) for path in found)
    return samples, classes


def check_same_classes(root: str | os.PathLike, train_split: str, val_split: str) -> list[str]:
    """Train and val must index classes identically; a mismatch would silently shift every val label."""
    root = _existing_root(root)
    train, val = list_classes(root / train_split), list_classes(root / val_split)
    if train != val:
        only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
        raise ValueError(
            f"class folders differ between {root / train_split} and {root / val_split}: "
            f"{len(only_train)} only in {train_split} {only_train[:5]}, {len(only_val)} only in {val_split} {only_val[:5]}"
        )
    return train


def resolve_root(cfg: DataConfig) -> Path:
    """The data set's folder; the synthetic set is generated there on first use."""
    if cfg.name == DatasetKind.synthetic:
        from delving.data.synthetic import ensure_synthetic

        return ensure_synthetic(cfg)
    if cfg.root is None:
        raise ValueError(f"data={cfg.name.value} needs data.root=/path/to/the/data/set")
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
