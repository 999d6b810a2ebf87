import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers.data import tiny_config, write_jpeg
from scipy.io import savemat

from delving.data.datasets import class_names, list_samples

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_imagenet.py"
# ILSVRC2012_IDs are not in wnid order (as in the real devkit): id 1 is the last wnid.
SYNSETS = [(1, "n03", "crane"), (2, "n01", "tench"), (3, "n02", "goldfish"), (4, "n00", "animal (a parent)")]
VAL_IDS = [1, 2, 3, 1, 2, 3, 3]


def _load_script():
    spec = importlib.util.spec_from_file_location("prepare_imagenet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_devkit(folder: Path, as_archive: bool) -> Path:
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height"]
    synsets = np.zeros(len(SYNSETS), dtype=[(f, "O") for f in fields])
    for row, (ident, wnid, words) in enumerate(SYNSETS):
        parent = wnid == "n00"
        synsets[row] = (ident, wnid, words, "", 3 if parent else 0, np.array([1, 2, 3] if parent else []), 0)
    data = folder / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    savemat(data / "meta.mat", {"synsets": synsets})
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in VAL_IDS))
    if not as_archive:
        return folder / "ILSVRC2012_devkit_t12"
    archive = folder / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
    return archive


def _flat_val(folder: Path) -> Path:
    for k in range(len(VAL_IDS)):
        write_jpeg(folder / f"ILSVRC2012_val_{k + 1:08d}.JPEG", 20, 16, seed=k)
    return folder


def _train_tar(folder: Path) -> Path:
    archive = folder / "ILSVRC2012_img_train.tar"
    with tarfile.open(archive, "w") as outer:
        for wnid in ("n01", "n02", "n03"):
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for i in range(2):
                    image = write_jpeg(folder / "src" / f"{wnid}_{i}.JPEG", 20, 16, seed=i)
                    inner.add(image, arcname=image.name)
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = inner_bytes.tell()
            inner_bytes.seek(0)
            outer.addfile(info, inner_bytes)
    return archive


def test_flat_val_and_train_archive(tmp_path):
    prepare = _load_script()
    devkit = _fake_devkit(tmp_path / "kit", as_archive=True)
    val_dir = _flat_val(tmp_path / "flat")
    target = tmp_path / "imagenet"
    argv = [str(target), "--devkit", str(devkit), "--val-dir", str(val_dir), "--mode", "move"]
    assert prepare.main([*argv, "--train-tar", str(_train_tar(tmp_path))]) == 0

    val, classes = list_samples(target, "val")
    assert classes == ["n01", "n02", "n03"]
    by_file = {Path(p).name: classes[c] for p, c in val}
    assert by_file == {
        "ILSVRC2012_val_00000001.JPEG": "n03",  # ID 1 -> n03
        "ILSVRC2012_val_00000002.JPEG": "n01",
        "ILSVRC2012_val_00000003.JPEG": "n02",
        "ILSVRC2012_val_00000004.JPEG": "n03",
        "ILSVRC2012_val_00000005.JPEG": "n01",
        "ILSVRC2012_val_00000006.JPEG": "n02",
        "ILSVRC2012_val_00000007.JPEG": "n02",
    }
    assert not list(val_dir.iterdir())  # moved, not copied
    train, _ = list_samples(target, "train")
    assert [c for _, c in train] == [0, 0, 1, 1, 2, 2]
    assert class_names(tiny_config(target), target, classes) == ["tench", "goldfish", "crane"]

    before = sorted(str(p) for p in target.rglob("*"))
    assert prepare.main(argv) == 0  # idempotent: val is done, the emptied source is not read again
    assert sorted(str(p) for p in target.rglob("*")) == before


def test_symlinks_and_half_done_target_is_refused(tmp_path, capsys):
    prepare = _load_script()
    devkit = _fake_devkit(tmp_path / "kit", as_archive=False)
    val_dir = _flat_val(tmp_path / "flat")
    target = tmp_path / "imagenet"
    (target / ".partial-val" / "n01").mkdir(parents=True)
    argv = [str(target), "--devkit", str(devkit), "--val-dir", str(val_dir)]
    assert prepare.main(argv) == 2
    assert "interrupted run" in capsys.readouterr().err
    assert not (target / "val").exists()

    (target / ".partial-val" / "n01").rmdir()
    (target / ".partial-val").rmdir()
    assert prepare.main(argv) == 0
    linked = target / "val" / "n03" / "ILSVRC2012_val_00000004.JPEG"
    assert linked.is_symlink() and linked.resolve() == (val_dir / "ILSVRC2012_val_00000004.JPEG").resolve()
    assert len(list(val_dir.iterdir())) == len(VAL_IDS)  # sources kept


def test_missing_val_files_fail_before_anything_moves(tmp_path):
    prepare = _load_script()
    devkit = _fake_devkit(tmp_path / "kit", as_archive=False)
    val_dir = _flat_val(tmp_path / "flat")
    (val_dir / "ILSVRC2012_val_00000007.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match="1 validation files missing"):
        prepare.main(
            [str(tmp_path / "t"), "--devkit", str(devkit), "--val-dir", str(val_dir), "--mode", "move"]
        )
    assert len(list(val_dir.iterdir())) == 6 and not (tmp_path / "t" / ".partial-val").exists()
