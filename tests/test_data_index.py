"""The listing in arrays: ImageFolder's order, the stored listing and when it is refreshed, the symlink policy,
and the memory a forked worker copies when it reads every entry (arrays vs a Python list)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import warm
from helpers.data import make_folder_dataset, tiny_config, write_jpeg
from helpers.runs import REPO, cli_env
from torchvision.datasets import ImageFolder

from delving.data import index as index_module
from delving.data.datasets import DataSetLayoutError, list_samples
from delving.data.index import FolderListing, PackedStrings, folder_listing
from delving.data.readers import FolderReader, open_split
from delving.data.shards import write_shards


@pytest.fixture(autouse=True)
def short_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing is stored once its folders are RACY_SECONDS old; tests wait a fraction of a second instead."""
    monkeypatch.setattr(index_module, "RACY_SECONDS", 0.2)


def _age(root: Path) -> None:
    """Waits until the tree's last change is older than the racy window (a fresh folder's listing is never
    stored: its time stamp may not yet show the next change). Setting the folder times back would not do:
    the listing is keyed on the ctime, which that moves to now."""
    time.sleep(index_module.RACY_SECONDS + 0.05)


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


@pytest.mark.parametrize("damage", ["not a zip", "empty", "truncated"])
def test_a_damaged_stored_listing_is_listed_again_with_one_warning(
    tree: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    _age(tree)
    first = _listing_of(tree)
    stored = index_module._cache_file(tree / "train")
    whole = stored.read_bytes()
    stored.write_bytes(
        {"not a zip": b"not a zip", "empty": b"", "truncated": whole[: len(whole) // 2]}[damage]
    )
    caplog.clear()
    with caplog.at_level("INFO", logger="delving.data.index"):
        assert _listing_of(tree) == first
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and f"ignoring the stored listing {stored}" in warnings[0], warnings
    assert "allow_pickle" not in warnings[0]
    assert stored.read_bytes() != whole[: len(whole) // 2] and _listing_of(tree) == first  # stored again


def test_the_stored_listing_is_fsynced_before_the_rename(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _age(tree)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd)
    )
    monkeypatch.setattr(
        os, "replace", lambda a, b: events.append(("replace", os.fspath(a))) or real_replace(a, b)
    )
    folder_listing(tree / "train")
    renamed = [path for kind, path in events if kind == "replace"]
    assert len(renamed) == 1 and ("fsync", renamed[0]) in events[: events.index(("replace", renamed[0]))]
    assert index_module._cache_file(tree / "train").exists()


def _tar(tmp_path: Path, archive: str, files: dict[str, int]) -> Path:
    """A reproducible archive made by GNU tar: the folders train/, train/c0/, train/c1/ and `files` (path ->
    JPEG seed), every member with the same fixed time, as release tarballs are made."""
    source = tmp_path / f"{archive}-src"
    for name, seed in files.items():
        write_jpeg(source / name, 20, 20, seed=seed)
    members = sorted(["train", "train/c0", "train/c1", *files])  # tree order: each folder before its files
    subprocess.run(
        ["tar", "--mtime=@1600000000", "--no-recursion", "-C", str(source), "-cf", str(tmp_path / archive), *members],
        check=True,
    )  # fmt: skip
    return tmp_path / archive


def _extract(archive: Path, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(where)], check=True)  # as users extract it


def test_a_two_part_archive_extracted_around_a_launch_is_listed_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """tar -x sets each folder's mtime back to the archive's: the second part added files to folders whose
    mtime and inode were as stored, and half the data set stayed out of the listing."""
    parts = [{f"train/c{c}/{part}{i}.JPEG": 10 * c + i for c in (0, 1) for i in (0, 1)} for part in "ab"]
    root = tmp_path / "ds"
    _extract(_tar(tmp_path, "part1.tar", parts[0]), root)
    _age(root)
    with caplog.at_level("INFO", logger="delving.data.index"):
        assert len(_listing_of(root)) == 4  # the launch between the two parts: stored
        assert index_module._cache_file(root / "train").exists()
        caplog.clear()
        assert len(_listing_of(root)) == 4
        used = [r.getMessage() for r in caplog.records if "using the stored listing" in r.getMessage()]
        assert len(used) == 1 and "delving-verify-data" in used[0] and "4 images" in used[0]
        _extract(_tar(tmp_path, "part2.tar", parts[1]), root)
        caplog.clear()
        assert _listing_of(root) == [(f"c{c}/{p}{i}.JPEG", c) for c in (0, 1) for p in "ab" for i in (0, 1)]
        assert not any("using the stored listing" in r.getMessage() for r in caplog.records)


def test_a_data_set_replaced_at_the_same_path_by_a_reproducible_tarball_is_listed_again(
    tmp_path: Path,
) -> None:
    """Same folder names and times, and the folders' inodes kept (the files replaced) or reused."""
    old_tar = _tar(tmp_path, "v1.tar", {f"train/c{c}/old{i}.JPEG": c + i for c in (0, 1) for i in (0, 1)})
    new_tar = _tar(tmp_path, "v2.tar", {f"train/c{c}/new{i}.JPEG": c + i for c in (0, 1) for i in (0, 1)})
    root = tmp_path / "ds"
    _extract(old_tar, root)
    _age(root)
    assert _listing_of(root)[0][0] == "c0/old0.JPEG" and index_module._cache_file(root / "train").exists()
    for path in (root / "train").rglob("*.JPEG"):  # rsync --delete of the new release: the folders stay
        path.unlink()
    _extract(new_tar, root)
    _age(root)
    assert [p for p, _ in _listing_of(root)] == [f"c{c}/new{i}.JPEG" for c in (0, 1) for i in (0, 1)]
    shutil.rmtree(root / "train")  # removed and extracted again: new folders, perhaps the old inodes
    _extract(old_tar, root)
    _age(root)
    assert [p for p, _ in _listing_of(root)] == [f"c{c}/old{i}.JPEG" for c in (0, 1) for i in (0, 1)]


def test_verify_data_lists_afresh_and_refreshes_the_stored_listing(tree: Path) -> None:
    """A stored listing that misses a file (stored by an older delving, or stale in a way no key can see):
    verify-data must check the folder as it is, and leave the true listing behind for the next launch."""
    from delving.data.verify import scan_split

    _age(tree)
    full = _listing_of(tree)
    stored = index_module._cache_file(tree / "train")
    with np.load(stored) as arrays:
        entries = dict(arrays)
    keep = len(full) - 1  # drop the last file from the store, and make that file unreadable
    entries["path_blob"] = entries["path_blob"][: entries["path_offsets"][keep]]
    entries["path_offsets"], entries["labels"] = entries["path_offsets"][: keep + 1], entries["labels"][:keep]
    meta = json.loads(entries["meta"].tobytes())
    meta["count"] = keep
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(stored, "wb") as file:
        np.savez(file, **entries)
    assert len(_listing_of(tree)) == keep  # the stale store is what a launch uses
    missing = tree / "train" / full[-1][0]
    missing.write_bytes(b"")
    os.utime(missing.parent, ns=(0, index_module.change_key([missing.parent])[0, 1]))  # times as before
    assert [path for path, _ in scan_split(tiny_config(tree), "train", 1)] == [str(missing)]
    assert _listing_of(tree) == full  # the store now holds the fresh listing


def test_a_file_symlink_loop_in_a_class_folder_is_a_bad_file(tmp_path: Path) -> None:
    from delving.data.verify import scan_split

    root = make_folder_dataset(tmp_path / "ds", classes=2, train_per_class=2, val_per_class=1)
    os.symlink("b.JPEG", root / "train" / "c1" / "a.JPEG")
    os.symlink("a.JPEG", root / "train" / "c1" / "b.JPEG")
    os.symlink("nowhere.JPEG", root / "train" / "c0" / "dangling.JPEG")
    samples, _ = list_samples(root, "train")
    assert len(samples) == 2 + 2 + 3
    bad = dict(scan_split(tiny_config(root), "train", 1))
    assert sorted(bad) == sorted(
        str(root / "train" / f) for f in ("c1/a.JPEG", "c1/b.JPEG", "c0/dangling.JPEG")
    )
    assert "Too many levels of symbolic links" in bad[str(root / "train" / "c1" / "a.JPEG")]


@pytest.mark.slow
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
        result = warm.run(
            [sys.executable, "-m", "delving.cli.verify_data", "data=folder", f"data.root={root}", "processes=1"],
            env=cli_env(), cwd=REPO, timeout=120,
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


@pytest.mark.slow
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
