import re

import pytest
from helpers.data import make_folder_dataset, tiny_config, write_jpeg
from torchvision.datasets import ImageFolder

from delving.data.datasets import check_same_classes, class_names, list_samples
from delving.errors import UserError


def test_samples_and_class_indices_match_torchvision(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", classes=4, train_per_class=5, val_per_class=2)
    (root / "train" / "c2" / "notes.txt").write_text("not an image")
    samples, classes = list_samples(root, "train")
    assert classes == ["c0", "c1", "c2", "c3"]
    assert len(samples) == 20
    assert [c for _, c in samples] == [k for k in range(4) for _ in range(5)]
    reference = ImageFolder(str(root / "train"))
    assert reference.classes == classes
    assert samples == [(p, c) for p, c in reference.samples]
    val, _ = list_samples(root, "val")
    assert len(val) == 8


def test_clear_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"data root not found: {tmp_path / 'nope'}")):
        list_samples(tmp_path / "nope", "train")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"a_file is a file, not a folder: point data.root= at the folder"):
        list_samples(tmp_path / "a_file", "train")
    root = make_folder_dataset(tmp_path / "ds", classes=2, train_per_class=2, val_per_class=1)
    with pytest.raises(FileNotFoundError, match=r"split folder not found: .*ds/test"):
        list_samples(root, "test")
    (root / "train" / "c9").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty class folder .*train/c9"):
        list_samples(root, "train")
    with pytest.raises(ValueError, match=r"1 only in train \['c9'\], 0 only in val"):
        check_same_classes(root, "train", "val")


def test_class_names_from_file_or_folder_names(tmp_path):
    root = tmp_path / "ds"
    write_jpeg(root / "train" / "n01" / "a.JPEG", 8, 8, seed=0)
    cfg = tiny_config(root)
    assert class_names(cfg, root, ["n01", "n02"]) == ["n01", "n02"]
    (root / "LOC_synset_mapping.txt").write_text("n01 tench, Tinca tinca\nn02 goldfish\n")
    assert class_names(cfg, root, ["n01", "n02"]) == ["tench, Tinca tinca", "goldfish"]
