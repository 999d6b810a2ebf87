"""The listing in arrays: ImageFolder's order, the stored listing and when it is refreshed, the symlink policy,
and the memory a forked worker copies when it reads every entry (arrays vs a Python list)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.data import make_folder_dataset, tiny_config, write_jpeg
from torchvision.datasets import ImageFolder

from delving.data import index as index_module
from delving.data.datasets import DataSetLayoutError, list_samples
from delving.data.index import FolderListing, PackedStrings, folder_listing
from delving.data.readers import FolderReader, open_split
from delving.data.shards import write_shards


def _age(root: Path, seconds: float = 60.0) -> None:
    """Sets every folder's time into the past, as for a data set copied a while ago (a fresh folder's
    listing is never stored: its time stamp may not yet show the next change)."""
    when = time.time() - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (when, when))


def _listing_of(root: Path, split: str = "train") -> list[tuple[str, int]]:
    listing = folder_listing(root / split)
    return [(listing.paths[i], int(listing.labels[i])) for i in range(len(listing.labels))]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = make_folder_dataset(tmp_path / "ds", classes=3, train_per_class=4, val_per_class=2)
    write_jpeg(root / "train" / "c1" / "sub" / "deep" / "x.jpg", 20, 20, seed=5)
    write_jpeg(root / "train" / "c1" / "sub-a" / "y.png", 20, 20, seed=6, fmt="PNG")
    (root / "train" / "c1" / "notes.txt").write_text("not an image")
    return root


def test_the_listing_is_torchvisions_imagefolder_order(tree: Path) -> None:
    ours, classes = list_samples(tree, "train")
    theirs = ImageFolder(str(tree / "train"))
    assert classes == theirs.classes
    assert ours == theirs.samples
    (tree / "train" / "c2" / ".hidden.JPEG").write_bytes(
        b""
    )  # skipped, unlike ImageFolder (an OS's metadata)
    assert list_samples(tree, "train")[0] == ours
    reader, _ = open_split(tiny_config(tree), "train")
    assert [reader.source(i) for i in range(len(reader))] == [p for p, _ in theirs.samples]
    assert reader.sample_id(4 + 1) == "c1/001.JPEG"


def test_packed_strings_keep_any_file_name(tmp_path: Path) -> None:
    names = ["a.jpg", "ü/ß.JPEG", os.fsdecode(b"bad\xff.jpg"), ""]
    packed = PackedStrings.from_strings(names)
    assert [packed[i] for i in range(len(packed))] == names
    assert packed.blob.dtype == np.uint8 and packed.offsets.dtype == np.int64


def test_the_stored_listing_is_used_until_a_file_is_added_removed_or_renamed(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _age(tree)
    first = _listing_of(tree)
    calls = []
    real_walk = index_module.walk_split
    monkeypatch.setattr(index_module, "walk_split", lambda d: calls.append(d) or real_walk(d))
    assert _listing_of(tree) == first and calls == []  # read back, not listed

    cases = {
        "added": lambda: write_jpeg(tree / "train" / "c0" / "zzz.JPEG", 20, 20, seed=9),
        "removed": lambda: (tree / "train" / "c2" / "001.JPEG").unlink(),
        "renamed": lambda: (tree / "train" / "c1" / "sub" / "deep" / "x.jpg").rename(
            tree / "train" / "c1" / "sub" / "deep" / "w.jpg"
        ),
        "new class": lambda: write_jpeg(tree / "train" / "c3" / "a.JPEG", 20, 20, seed=10),
    }
    for what, change in cases.items():
        calls.clear()
        change()
        samples = ImageFolder(str(tree / "train")).samples
        expected = [(Path(path).relative_to(tree / "train").as_posix(), label) for path, label in samples]
        assert _listing_of(tree) == expected, what
        assert len(calls) == 1, what
        _age(tree)
        _listing_of(tree)  # stored again once the change has aged


def test_a_fresh_tree_is_not_stored_and_another_root_is_never_trusted(tmp_path: Path) -> None:
    one = make_folder_dataset(tmp_path / "one", classes=2, train_per_class=2, val_per_class=1)
    folder_listing(one / "train")
    assert not index_module._cache_file(one / "train").exists()  # changed seconds ago: not stored
    _age(one)
    folder_listing(one / "train")
    assert index_module._cache_file(one / "train").exists()

    two = tmp_path / "two"
    shutil.copytree(one, two)
    (two / "train" / "c0" / "000.JPEG").rename(two / "train" / "c0" / "renamed.JPEG")
    _age(two)
    assert index_module._cache_file(two / "train") != index_module._cache_file(one / "train")
    assert ("c0/renamed.JPEG", 0) in _listing_of(two) and ("c0/000.JPEG", 0) in _listing_of(one)
    # A folder replaced by another one at the same path (another inode) is listed again.
    shutil.rmtree(one / "train")
    shutil.copytree(two / "train", one / "train")
    _age(one)
    assert _listing_of(one)[0][0] == "c0/001.JPEG"


def test_a_damaged_stored_listing_is_listed_again(tree: Path) -> None:
    _age(tree)
    first = _listing_of(tree)
    index_module._cache_file(tree / "train").write_bytes(b"not a zip")
    assert _listing_of(tree) == first


def test_symlinks_files_followed_folder_links_in_a_class_refused(tmp_path: Path) -> None:
    root = make_folder_dataset(tmp_path / "ds", classes=2, train_per_class=3, val_per_class=3)
    elsewhere = make_folder_dataset(tmp_path / "other", classes=1, train_per_class=2, val_per_class=1)
    os.symlink(elsewhere / "train" / "c0" / "000.JPEG", root / "train" / "c0" / "linked.JPEG")
    os.symlink(elsewhere / "train" / "c0", root / "train" / "c2")  # a class folder kept on another disk
    os.symlink(elsewhere / "val" / "c0", root / "val" / "c2")
    samples, classes = list_samples(root, "train")
    assert classes == ["c0", "c1", "c2"] and len(samples) == 3 + 1 + 3 + 2

    for name, target in (("loop", "."), ("up", "..")):
        link = root / "val" / "c0" / name
        os.symlink(target, link)
        with pytest.raises(DataSetLayoutError, match=f"{link}.*folder symlink inside a class folder"):
            list_samples(root, "val")
        result = subprocess.run(
            [sys.executable, "-m", "delving.cli.verify_data", "data=folder", f"data.root={root}", "processes=1"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2 and f"{link} -> {target} is a folder symlink" in result.stderr
        with pytest.raises(DataSetLayoutError):
            write_shards(root, "val", tmp_path / f"shards-{name}", 4)
        link.unlink()

    os.symlink(root, root / "val" / "c9")
    with pytest.raises(DataSetLayoutError, match="links to the split folder or a parent"):
        list_samples(root, "val")
    (root / "val" / "c9").unlink()
    os.symlink(root / "val" / "c1", root / "val" / "c9")
    with pytest.raises(DataSetLayoutError, match="same folder as the class 'c1'"):
        list_samples(root, "val")
    (root / "val" / "c9").unlink()
    assert len(list_samples(root, "val")[0]) == 3 + 3 + 1


def _bench_index():
    """scripts/bench_index.py, whose worker measurement and list index the test shares."""
    spec = importlib.util.spec_from_file_location(
        "bench_index", Path(__file__).parents[1] / "scripts" / "bench_index.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc smaps_rollup")
def test_a_worker_reading_every_entry_copies_a_small_fraction_of_the_list_index() -> None:
    count = 200_000
    rel = [f"n{c:08d}/n{c:08d}_{i}.JPEG" for c in range(100) for i in range(count // 100)]
    labels = np.repeat(np.arange(100, dtype=np.int64), count // 100)
    bench = _bench_index()
    arrays = FolderReader(FolderListing(Path("/data/train"), [], PackedStrings.from_strings(rel), labels, []))
    as_list = bench.ListReader([(f"/data/train/{p}", int(c)) for p, c in zip(rel, labels, strict=True)])
    del rel
    ((list_growth, _),) = bench.worker_growth(as_list, count, 1)  # private memory (USS) growth, MB
    ((array_growth, _),) = bench.worker_growth(arrays, count, 1)
    print(f"worker growth for {count:,} entries: list {list_growth:.1f} MB, arrays {array_growth:.1f} MB")
    assert list_growth > 10  # the defect this guards against is real at this size
    assert array_growth < 0.1 * list_growth
