"""Folder data sets (ImageNet's `train/<wnid>/*.JPEG` layout and any image folder): listing, checks, class names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from delving.data.config import DataConfig, DataConfigError, DatasetKind
from delving.data.imagenet import read_devkit_meta
from delving.errors import UserError

# torchvision's IMG_EXTENSIONS: the same files are listed as by ImageFolder, so class indices and order agree.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# File names for optional class names, looked up in the root: "<wnid> <name...>" per line.
_IMG_EXTENSIONS_B = tuple(ext.encode() for ext in IMG_EXTENSIONS)
CLASS_NAME_FILES = ("classes.txt", "LOC_synset_mapping.txt")


class DataSetNotFoundError(UserError, FileNotFoundError):
    """A data root, split folder or class folder that is missing, empty or not a folder."""


class DataSetLayoutError(UserError, ValueError):
    """A folder layout that would list images twice or under another class (symlink loops, aliased classes)."""


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
    """Sorted sub-folder names (torchvision's order): the class index of a folder is its position here.

    A class folder may be a symlink to a folder elsewhere, but not to the split, one of its parents, or the
    same folder as another class: its images would be counted twice or under another label.
    """
    if not split_dir.is_dir():
        raise DataSetNotFoundError(f"data split folder not found: {split_dir}")
    entries = sorted(
        (entry for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith(".")),
        key=lambda entry: entry.name,
    )
    if not entries:
        raise DataSetNotFoundError(
            f"no class folders in {split_dir} (expected {split_dir}/<class>/<image files>)"
        )
    linked = [entry for entry in entries if entry.is_symlink()]
    if linked:
        _check_class_links(split_dir, entries, linked)
    return [entry.name for entry in entries]


def _check_class_links(split_dir: Path, entries: list[os.DirEntry], linked: list[os.DirEntry]) -> None:
    split_real = os.path.realpath(split_dir)
    real = {entry.name: os.path.realpath(entry.path) for entry in entries}
    for entry in linked:
        target = real[entry.name]
        if split_real == target or split_real.startswith(target.rstrip(os.sep) + os.sep):
            raise DataSetLayoutError(
                f"{entry.path} -> {os.readlink(entry.path)} links to the split folder or a parent of it: a loop "
                "that would list every image under one class; remove the link"
            )
        twin = next((name for name, path in real.items() if path == target and name != entry.name), None)
        if twin is not None:
            raise DataSetLayoutError(
                f"{entry.path} -> {os.readlink(entry.path)} is the same folder as the class {twin!r}: its images "
                "would count twice under two labels; remove one of them"
            )


def _is_image_name(name: bytes) -> bool:
    return not name.startswith(b".") and name.lower().endswith(_IMG_EXTENSIONS_B)


def _links_to_folder(entry: os.DirEntry) -> bool:
    """Whether a symlink ends at a folder; a loop (`a -> b -> a`) or a dangling link does not: it stays in the
    listing as an image name and the decoder reports it as a bad file."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _class_files(class_dir: bytes, prefix: bytes) -> tuple[list[bytes], list[bytes]]:
    """(`prefix` + the image paths under one class folder relative to it, in torchvision's order (folders by
    path, files by name); `prefix` + every folder scanned). Sub-folders are walked; a symlink to a folder inside a class folder is refused (it
    can loop, `a/loop -> .`, or pull in another class's images, `a/up -> ..`); file symlinks are followed."""
    folders: list[tuple[bytes, list[bytes]]] = []
    pending = [b""]
    while pending:
        relative = pending.pop()
        files = []
        folder = os.path.join(class_dir, relative) if relative else class_dir
        try:
            scan = os.scandir(folder)
        except PermissionError:
            raise DataSetNotFoundError(
                f"cannot read the folder {os.fsdecode(folder)} (permission denied): its images cannot be "
                "listed; give read and search rights (chmod a+rx) or remove it"
            ) from None
        with scan:
            for entry in scan:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(os.path.join(relative, entry.name) if relative else entry.name)
                elif entry.is_symlink() and _links_to_folder(entry):
                    path = os.fsdecode(entry.path)
                    raise DataSetLayoutError(
                        f"{path} -> {os.fsdecode(os.readlink(entry.path))} is a folder symlink inside a class "
                        "folder: it can loop or relabel another class's images; replace it by the folder itself "
                        "or remove it"
                    )
                elif _is_image_name(entry.name):
                    files.append(entry.name)
        folders.append((relative, sorted(files)))
    folders.sort()
    files = [
        prefix + (os.path.join(folder, name) if folder else name)
        for folder, names in folders
        for name in names
    ]
    return files, [prefix + folder for folder, _ in folders]


@dataclass
class SplitWalk:
    """One split folder's listing: what every reader shares (kept in arrays by data/index.py)."""

    classes: list[str]
    paths: list[bytes]  # relative to the split folder: <class>/<file>
    labels: np.ndarray  # int64
    folders: list[bytes]  # every folder scanned, relative (b"" is the split folder): what a change touches


def walk_split(split_dir: Path) -> SplitWalk:
    """The split's classes, images and labels, in torchvision's ImageFolder order."""
    classes = list_classes(split_dir)
    split_bytes = os.fsencode(split_dir)
    paths: list[bytes] = []
    folders: list[bytes] = [b""]
    counts = []
    for name in classes:
        encoded = os.fsencode(name)
        found, scanned = _class_files(os.path.join(split_bytes, encoded), encoded + os.fsencode(os.sep))
        folders.extend(folder.rstrip(os.fsencode(os.sep)) for folder in scanned)
        if not found:
            raise DataSetNotFoundError(
                f"empty class folder (no {'/'.join(IMG_EXTENSIONS)} files): {split_dir / name}"
            )
        paths.extend(found)
        counts.append(len(found))
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    return SplitWalk(classes, paths, labels, folders)


def existing_root(root: str | os.PathLike) -> Path:
    """The data root as a Path; a missing root or a file instead of a folder is a one-line error."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataSetNotFoundError(
            f"data root {root} is a file, not a folder: point data.root= at the folder that holds the splits"
        )
    if not root.is_dir():
        raise DataSetNotFoundError(f"data root not found: {root}")
    return root


def list_samples(root: str | os.PathLike, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) for every image of `root/split`, sorted as torchvision's ImageFolder, and the classes.

    A Python object per sample: for tools and tests. Readers keep the listing in arrays (data/index.py).
    """
    split_dir = existing_root(root) / split
    walk = walk_split(split_dir)
    prefix = os.fsencode(split_dir) + os.fsencode(os.sep)
    samples = [
        (os.fsdecode(prefix + path), int(label)) for path, label in zip(walk.paths, walk.labels, strict=True)
    ]
    return samples, walk.classes


def check_same_classes(root: str | os.PathLike, train_split: str, val_split: str) -> list[str]:
    """Train and val must index classes identically; a mismatch would silently shift every val label."""
    root = existing_root(root)
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


def class_names(
    cfg: DataConfig, root: str | os.PathLike, classes: list[str], carried: list[str] | None = None
) -> list[str]:
    """Human-readable names for reports; those the copy carries (the hub's), else the folder names, where no
    name source exists (never an error)."""
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
        elif carried is not None and len(carried) == len(classes):
            names = {wnid: name or wnid for wnid, name in zip(classes, carried, strict=True)}
    return [names.get(wnid, wnid) for wnid in classes]
