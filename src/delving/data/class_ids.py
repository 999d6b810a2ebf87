"""Which class an integer label means, for copies that carry integer labels (the hub's shards and parquet).

The paper's labels index the classes in sorted WordNet-id order (the folder layout's order), and so do the
hub's ImageNet-1k copies. A copy says which wnid a label is through its file names (`n01440764_10026.JPEG`,
the hub parquet's `n01440764_10026_n01440764.JPEG`): every label must name exactly one wnid, and the labels
must follow the sorted wnids; a copy that disagrees is refused, since its every label would mean another
class. A split whose names carry no wnid (the validation files `ILSVRC2012_val_00000001.JPEG`) takes the
class list from a `classes.txt`/`LOC_synset_mapping.txt` in the copy's folder, else from its training split.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from delving.data.datasets import CLASS_NAME_FILES, ClassListError, DataSetLayoutError, read_class_names_file
from delving.data.index import PackedStrings

# A wnid at the start of a name or after `_` or `/` (searched inside one buffer of all names: `^` would not
# match at a name's start there, so the start is tried with match()).
_WNID_FIRST = re.compile(rb"(n\d{8})(?=[_.]|$)")
_WNID_INSIDE = re.compile(rb"[_/](n\d{8})(?=[_.]|$)")


def check_label_range(labels: np.ndarray, count: int, where: str) -> None:
    """Labels must index the `count` classes the copy declares."""
    if len(labels) and (labels.min() < 0 or labels.max() >= count):
        bad = int(labels[(labels < 0) | (labels >= count)][0])
        raise DataSetLayoutError(
            f"{where}: label {bad} is outside the {count} classes the copy declares [0, {count}); "
            "a label without a class (the hub's unlabelled test split has -1) cannot be trained or scored"
        )


def label_wnids(labels: np.ndarray, names: PackedStrings, count: int, where: str) -> list[str]:
    """Per label, the wnid its samples' file names carry ("" where none does); refuses a label whose names
    carry two wnids, or a wnid under two labels."""
    found: list[str] = [""] * count
    blob, offsets = names.blob.tobytes(), names.offsets.tolist()
    first, inside = _WNID_FIRST.match, _WNID_INSIDE.search
    for i, label in enumerate(labels.tolist()):
        match = first(blob, offsets[i], offsets[i + 1]) or inside(blob, offsets[i], offsets[i + 1])
        if match is None:
            continue
        wnid = match.group(1).decode()
        if not found[label]:
            found[label] = wnid
        elif found[label] != wnid:
            raise ClassListError(
                f"{where}: label {label} holds images of {found[label]} and of {wnid} ({names[i]}): the labels "
                "disagree with the file names; this copy is damaged or was converted with another class order"
            )
    named = [w for w in found if w]
    if len(set(named)) != len(named):
        twice = next(w for w in named if named.count(w) > 1)
        raise ClassListError(f"{where}: {twice} is the file name class of two labels; the labels are damaged")
    return found


def _root_class_list(root: Path) -> list[str] | None:
    for name in CLASS_NAME_FILES:
        if (root / name).is_file():
            return list(read_class_names_file(root / name))
    return None


def resolve_classes(
    wnids: list[str], root: Path, where: str, other_split: Callable[[], list[str] | None]
) -> list[str]:
    """The wnid list of a copy's labels (label k is entry k), checked against what the copy carries."""
    if all(wnids):
        if wnids != sorted(wnids):
            k = next(i for i in range(len(wnids) - 1) if wnids[i] > wnids[i + 1])
            raise ClassListError(
                f"{where}: label {k} is {wnids[k]} but label {k + 1} is {wnids[k + 1]}: the labels do not follow "
                "the sorted WordNet ids (the paper's and the hub's class order); this copy would train every "
                "class under another index"
            )
        return wnids
    listed = _root_class_list(root)
    source = f"{root}/{CLASS_NAME_FILES[0]}" if listed is not None else "the training split"
    if listed is None:
        listed = other_split()
    if listed is None:
        raise ClassListError(
            f"{where}: its file names carry no WordNet ids, so label k cannot be matched to a class: put "
            f"{CLASS_NAME_FILES[0]} ('<wnid> <name>' per line, sorted) in {root}, or the training split beside it"
        )
    if len(listed) != len(wnids):
        raise ClassListError(f"{where}: {len(wnids)} classes, but {source} lists {len(listed)}")
    clash = next((k for k, w in enumerate(wnids) if w and w != listed[k]), None)
    if clash is not None:
        raise ClassListError(
            f"{where}: label {clash} is {wnids[clash]} by its file names but {listed[clash]} in {source}"
        )
    return listed
