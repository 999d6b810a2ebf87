"""Builds the ILSVRC-2012 folder layout (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG, classes.txt) that data=imagenet reads.

Sources: the official archives (ILSVRC2012_img_train.tar of per-class tars, ILSVRC2012_img_val.tar) or folders
already extracted (a train folder of <wnid>/ folders, the flat val folder of 50,000 files), plus the devkit
(ILSVRC2012_devkit_t12.tar.gz or its folder) for the validation labels and class names. Archives are extracted
once into place; folders are moved or linked, never copied.

Each split is built in TARGET/.partial-<split> and renamed to TARGET/<split> when complete, so a rerun skips
finished splits (idempotent) and a leftover .partial-<split> from an interrupted run is refused, not mixed in.

    python scripts/prepare_imagenet.py /data/imagenet --devkit ILSVRC2012_devkit_t12.tar.gz \\
        --train-tar ILSVRC2012_img_train.tar --val-tar ILSVRC2012_img_val.tar
    python scripts/prepare_imagenet.py /data/imagenet --devkit devkit/ --val-dir flat_val/ --mode move
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
from pathlib import Path

from delving.data.datasets import check_same_classes, list_samples
from delving.data.imagenet import (
    extract_member,
    iter_tar_files,
    place,
    read_devkit,
)


class HalfDoneError(RuntimeError):
    pass


def _partial(target: Path, split: str) -> Path:
    partial = target / f".partial-{split}"
    if partial.exists():
        raise HalfDoneError(
            f"{partial} is left from an interrupted run: {target / split} is half-done. If files were moved "
            f"(--mode move) take them back from {partial}; then remove {partial} and run again."
        )
    partial.mkdir(parents=True)
    return partial


def prepare_val(
    target: Path, devkit_labels: dict[str, str], val_tar: Path | None, val_dir: Path | None, mode: str
) -> int:
    partial = _partial(target, "val")
    if val_tar is not None:
        for name, tar, info in iter_tar_files(val_tar):
            if name not in devkit_labels:
                raise ValueError(f"{name} in {val_tar} has no label in the devkit ground truth")
            extract_member(tar, info, partial / devkit_labels[name] / name)
    else:
        missing = [name for name in devkit_labels if not (val_dir / name).is_file()]
        if missing:  # checked before touching anything, so a move never stops half-way for this reason
            partial.rmdir()
            raise FileNotFoundError(
                f"{len(missing)} validation files missing from {val_dir}, e.g. {missing[:3]}"
            )
        for name, wnid in devkit_labels.items():
            place(val_dir / name, partial / wnid / name, mode)
    os.replace(partial, target / "val")
    return sum(1 for _ in (target / "val").glob("*/*"))


def prepare_train(
    target: Path, wnids: set[str], train_tar: Path | None, train_dir: Path | None, mode: str
) -> int:
    partial = _partial(target, "train")
    if train_tar is not None:
        with tarfile.open(train_tar, mode="r|*") as outer:
            for info in outer:  # one tar per class: n01440764.tar, ...
                wnid = Path(info.name).name.removesuffix(".tar")
                if not info.isfile() or wnid not in wnids:
                    raise ValueError(f"unexpected member {info.name} in {train_tar} (expected <wnid>.tar)")
                with tarfile.open(fileobj=outer.extractfile(info), mode="r|") as inner:
                    for image in inner:
                        if image.isfile():
                            extract_member(inner, image, partial / wnid / Path(image.name).name)
    else:
        found = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
        if set(found) != wnids:
            partial.rmdir()
            raise ValueError(
                f"{train_dir} has {len(found)} class folders that are not the devkit's {len(wnids)} wnids"
            )
        for wnid in found:
            place(train_dir / wnid, partial / wnid, mode)
    os.replace(partial, target / "train")
    return sum(1 for _ in (target / "train").glob("*/*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target", type=Path, help="the data set root (data.root)")
    parser.add_argument(
        "--devkit", type=Path, required=True, help="ILSVRC2012_devkit_t12.tar.gz or its folder"
    )
    train = parser.add_mutually_exclusive_group()
    train.add_argument("--train-tar", type=Path, help="ILSVRC2012_img_train.tar")
    train.add_argument("--train-dir", type=Path, help="a folder of <wnid>/ folders")
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--val-tar", type=Path, help="ILSVRC2012_img_val.tar")
    val.add_argument("--val-dir", type=Path, help="the flat folder of ILSVRC2012_val_*.JPEG")
    parser.add_argument(
        "--mode",
        choices=["move", "symlink", "hardlink"],
        default="symlink",
        help="for folder sources (default symlink)",
    )
    args = parser.parse_args(argv)

    devkit = read_devkit(args.devkit)
    args.target.mkdir(parents=True, exist_ok=True)
    try:
        for split, source in (
            ("train", args.train_tar or args.train_dir),
            ("val", args.val_tar or args.val_dir),
        ):
            if source is None:
                continue
            if (args.target / split).exists():
                print(f"{args.target / split} already prepared, left as it is")
            elif split == "train":
                print(
                    f"train: {prepare_train(args.target, set(devkit.words), args.train_tar, args.train_dir, args.mode)} images"
                )
            else:
                print(
                    f"val: {prepare_val(args.target, devkit.val_wnids(), args.val_tar, args.val_dir, args.mode)} images"
                )
    except HalfDoneError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = "".join(f"{wnid} {devkit.words[wnid]}\n" for wnid in sorted(devkit.words))
    (args.target / "classes.txt").write_text(names, encoding="utf-8")
    if (args.target / "train").is_dir() and (args.target / "val").is_dir():
        check_same_classes(args.target, "train", "val")
        print(f"ok: {len(list_samples(args.target, 'val')[0])} val images in {len(devkit.words)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
