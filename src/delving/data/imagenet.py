"""ILSVRC-2012 specifics: the devkit (class ids, names, validation ground truth) and building the folder layout."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DEVKIT_META = "data/meta.mat"
DEVKIT_VAL_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
VAL_FILE = "ILSVRC2012_val_{:08d}.JPEG"


@dataclass(frozen=True)
class Devkit:
    wnid_of_id: dict[int, str]  # ILSVRC2012_ID (1..1000, not sorted by wnid) -> wnid
    words: dict[str, str]  # wnid -> class name
    val_ids: list[int]  # ILSVRC2012_ID of val image k+1

    def val_wnids(self) -> dict[str, str]:
        """Validation file name -> wnid."""
        return {VAL_FILE.format(k + 1): self.wnid_of_id[i] for k, i in enumerate(self.val_ids)}


def _devkit_file(devkit: Path, member: str) -> bytes:
    """A devkit file from the extracted folder or the ILSVRC2012_devkit_t12.tar.gz archive."""
    if devkit.is_dir():
        path = devkit / member
        if not path.is_file():
            raise FileNotFoundError(f"devkit file not found: {path}")
        return path.read_bytes()
    with tarfile.open(devkit) as tar:
        for info in tar:
            if info.name.endswith("/" + member) or info.name == member:
                return tar.extractfile(info).read()
    raise FileNotFoundError(f"{member} not found in the devkit archive {devkit}")


def read_devkit_meta(devkit: str | os.PathLike) -> tuple[dict[int, str], dict[str, str]]:
    """(ILSVRC2012_ID -> wnid, wnid -> words) of the 1000 leaf synsets of data/meta.mat."""
    from scipy.io import loadmat

    synsets = loadmat(io.BytesIO(_devkit_file(Path(devkit), DEVKIT_META)), squeeze_me=True)["synsets"]
    leaves = [s for s in synsets if int(s["num_children"]) == 0]  # the classes; the rest are WordNet parents
    return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}, {
        str(s["WNID"]): str(s["words"]) for s in leaves
    }


def read_devkit(devkit: str | os.PathLike) -> Devkit:
    wnid_of_id, words = read_devkit_meta(devkit)
    ground_truth = _devkit_file(Path(devkit), DEVKIT_VAL_GROUND_TRUTH).decode().split()
    return Devkit(wnid_of_id, words, [int(x) for x in ground_truth])


def place(source: Path, target: Path, mode: str) -> None:
    """Moves or links one file or folder (never copies the image bytes)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "move":
        shutil.move(str(source), str(target))
    elif mode == "symlink":
        target.symlink_to(source.resolve(), target_is_directory=source.is_dir())
    elif mode == "hardlink":
        if source.is_dir():
            raise ValueError(f"cannot hard-link the folder {source}; use --mode move or symlink")
        os.link(source, target)
    else:
        raise ValueError(f"unknown mode {mode!r} (move, symlink, hardlink)")


def iter_tar_files(archive: Path) -> Iterator[tuple[str, tarfile.TarFile, tarfile.TarInfo]]:
    """(base name, tar, member) of each regular file, streaming (the archives are 6-140 GB)."""
    with tarfile.open(archive, mode="r|*") as tar:
        for info in tar:
            if info.isfile():
                yield Path(info.name).name, tar, info


def extract_member(tar: tarfile.TarFile, info: tarfile.TarInfo, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tar.extractfile(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
