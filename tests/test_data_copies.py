"""The hub's copies of ImageNet read in place (data=wds: timm/imagenet-1k-wds's shards, data=parquet: the
hub's parquet files), on fixtures in their published layouts built from the same JPEGs as a folder and our
shards: every copy gives the same samples in the same order and bitwise-equal training batches, its index is
built once, and a copy that contradicts itself is refused in one line before any work."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import warm
from helpers.configs import compose_config
from helpers.copies import CLASS_NAMES, WNIDS, make_every_copy, make_hub_shards, write_hub_parquet
from helpers.data import tiny_config, write_jpeg
from helpers.runs import EQUAL_RUN, KILL_STEP, TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env, run_train

from delving.checkpoint import Checkpoint
from delving.data import hub_shards, parquet, stored_index
from delving.data.config import DatasetKind
from delving.data.loaders import EvalLoader, TrainLoader
from delving.data.mean_image import compute_mean_image
from delving.data.readers import open_split
from delving.data.verify import scan_split
from delving.engine.preflight import preflight
from delving.errors import UserError

HUB_KINDS = ("wds", "parquet")
KINDS = ("shards", *HUB_KINDS)


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> dict[str, Path]:
    return make_every_copy(tmp_path_factory.mktemp("copies"))


def config(copies: dict[str, Path], kind: str, **overrides):
    val = "validation" if kind in HUB_KINDS else "val"
    return tiny_config(copies[kind], name=DatasetKind(kind), val_split=val, **overrides)


def _bytes(source) -> bytes:
    """A reader's source: a file path (folders) or the member's bytes (shards, parquet)."""
    return source.read() if hasattr(source, "read") else Path(source).read_bytes()


def _read_all(cfg, split: str):
    reader, classes = open_split(cfg, split)
    return classes, reader.labels.tolist(), [_bytes(reader.source(i)) for i in range(len(reader))]


@pytest.mark.parametrize("kind", KINDS)
def test_every_copy_reads_the_folders_images_in_the_folders_order(copies, kind):
    cfg, folder = config(copies, kind), config(copies, "folder")
    for split, folder_split in ((cfg.train_split, "train"), (cfg.val_split, "val")):
        assert _read_all(cfg, split) == _read_all(folder, folder_split)
    assert open_split(cfg, cfg.train_split)[1] == WNIDS  # label k is the k-th sorted wnid


def _batches(cfg, epoch: int, start_step: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = TrainLoader(cfg, batch_size=8, seed=5)
    try:
        return list(loader.epoch(epoch, start_step))
    finally:
        loader.close()


def test_every_copy_gives_bitwise_equal_training_batches(copies):
    """The same seed draws the same batches from the folder, our shards, the hub's shards and parquet (the
    three others store shuffled orders), and a mid-epoch restart with workers replays the same tail."""
    expected = [_batches(config(copies, "folder"), epoch) for epoch in (0, 1)]
    assert len(expected[0]) == 6 and not torch.equal(expected[0][0][1], expected[1][0][1])
    for kind in KINDS:
        for epoch in (0, 1):
            got = _batches(config(copies, kind), epoch)
            assert all(torch.equal(a, b) and torch.equal(la, lb)
                       for (a, la), (b, lb) in zip(got, expected[epoch], strict=True)), kind  # fmt: skip
    for kind in HUB_KINDS:  # workers: each reads its own file handles (and parquet row groups)
        tail = _batches(config(copies, kind, num_workers=2), 1, start_step=3)
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(tail, expected[1][3:], strict=True)), kind


@pytest.mark.parametrize("kind", HUB_KINDS)
def test_eval_loader_and_mean_image_match_the_folders(copies, kind):
    cfg, folder = config(copies, kind), config(copies, "folder")
    got = [x for x in EvalLoader(cfg, cfg.val_split, batch_size=3)]
    want = [x for x in EvalLoader(folder, "val", batch_size=3)]
    assert all(torch.equal(a, b) and torch.equal(la, lb) for (a, la), (b, lb) in zip(got, want, strict=True))
    np.testing.assert_array_equal(compute_mean_image(cfg, limit=9), compute_mean_image(folder, limit=9))


def test_hub_indexes_are_built_once_and_again_when_a_file_changes(copies, monkeypatch, tmp_path):
    monkeypatch.setenv("DELVING_DATA_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(stored_index, "RACY_SECONDS", 0.0)  # the fixture's files were written just now
    scans = []
    for module, builder in ((hub_shards, "scan_shards"), (parquet, "build_index")):
        real = getattr(module, builder)
        monkeypatch.setattr(module, builder, lambda *a, real=real, **k: scans.append(a[1]) or real(*a, **k))
    for kind in HUB_KINDS:
        for _ in range(2):
            open_split(config(copies, kind), "train")
    assert sorted(scans) == ["train", "train", "validation", "validation"]  # val: its classes are checked
    shard = copies["wds"] / "imagenet1k-train-0001.tar"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns))  # same times, a new ctime
    open_split(config(copies, "wds"), "train")
    assert sorted(scans) == ["train", "train", "train", "validation", "validation"]


# Preflight's one-line refusals (before the run folder exists).


def _refusal(root: Path, kind: str) -> str:
    data = [o for o in TINY_DATA if o != "data=synthetic"]
    cfg = compose_config([*data, *TINY_MODEL, *TINY_TRAIN, f"data={kind}", f"data.root={root}"])
    with pytest.raises(UserError) as error:
        preflight(cfg, 1)
    assert "\n" not in str(error.value)
    return str(error.value)


def _copy_tree(source: Path, target: Path) -> Path:
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target / path.relative_to(source))
    return target


def test_preflight_refuses_broken_hub_shards_in_one_line(copies, tmp_path):
    (tmp_path / "empty").mkdir()
    assert "no shards of split 'train'" in _refusal(tmp_path / "empty", "wds")
    broken = _copy_tree(copies["wds"], tmp_path / "not_tar")
    (broken / "imagenet1k-train-0002.tar").unlink()
    (broken / "imagenet1k-train-0002.tar").write_bytes(b"not a tar at all" * 100)
    assert "imagenet1k-train-0002.tar: not a tar shard" in _refusal(broken, "wds")
    short = _copy_tree(copies["wds"], tmp_path / "short")
    info = json.loads((short / "_info.json").read_text())
    info["splits"]["train"]["shard_lengths"][0] += 1
    info["splits"]["train"]["num_samples"] += 1
    (short / "_info.json").unlink()
    (short / "_info.json").write_text(json.dumps(info))
    assert "imagenet1k-train-0000.tar: 12 samples, but the info file says 13" in _refusal(short, "wds")


def _hub_parquet(root: Path, rows: list[tuple[str, int]], schema_ok: bool = True) -> Path:
    """train and validation parquet files of tiny JPEGs named `name`, labelled `label`."""
    for split in ("train", "validation"):
        data = [(name, write_jpeg(root / "jpg" / name, 32, 32, i).read_bytes(), label)
                for i, (name, label) in enumerate(rows)]  # fmt: skip
        path = root / "data" / f"{split}-00000-of-00001.parquet"
        if schema_ok:
            write_hub_parquet(path, data, row_group=4)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"label": [label for *_, label in data]}), path)
    return root


GOOD_ROWS = [(f"{wnid}_{i}_{wnid}.JPEG", k) for k, wnid in enumerate(WNIDS) for i in range(4)]


@pytest.mark.slow
def test_preflight_refuses_parquet_that_contradicts_itself_in_one_line(tmp_path):
    assert "no `image` column" in _refusal(
        _hub_parquet(tmp_path / "a", GOOD_ROWS, schema_ok=False), "parquet"
    )
    unlabelled = [(name, -1 if i == 3 else label) for i, (name, label) in enumerate(GOOD_ROWS)]
    assert "label -1 is outside the 4 classes" in _refusal(
        _hub_parquet(tmp_path / "b", unlabelled), "parquet"
    )
    mixed = [(name, 1 if i == 0 else label) for i, (name, label) in enumerate(GOOD_ROWS)]
    assert "label 1 holds images of n01440764 and of n01443537" in _refusal(_hub_parquet(tmp_path / "c", mixed),
                                                                            "parquet")  # fmt: skip
    swapped = [(name, {0: 1, 1: 0}.get(label, label)) for name, label in GOOD_ROWS]
    assert "do not follow the sorted WordNet ids" in _refusal(
        _hub_parquet(tmp_path / "d", swapped), "parquet"
    )
    cfg = compose_config([*(o for o in TINY_DATA if o != "data=synthetic"), *TINY_MODEL, *TINY_TRAIN,
                          "data=parquet", f"data.root={_hub_parquet(tmp_path / 'e', GOOD_ROWS)}"])  # fmt: skip
    assert preflight(cfg, 1).model.num_classes == 4


def test_hub_shards_val_without_wnids_takes_the_training_splits_classes(copies, tmp_path):
    """timm's validation keys carry no wnid: the classes come from the train split, or from classes.txt."""
    only_val = tmp_path / "val_only"
    only_val.mkdir()
    for path in copies["wds"].glob("imagenet1k-validation-*.tar"):
        os.link(path, only_val / path.name)
    cfg = tiny_config(only_val, name=DatasetKind.wds, val_split="validation")
    with pytest.raises(UserError, match=r"carry no WordNet ids.*put classes\.txt"):
        open_split(cfg, "validation")
    (only_val / "classes.txt").write_text(
        "".join(f"{w} {n}\n" for w, n in zip(WNIDS, CLASS_NAMES, strict=True))
    )
    assert open_split(cfg, "validation")[1] == WNIDS


def test_hub_shards_carry_class_names_and_refuse_a_label_named_twice(copies, tmp_path):
    reader, _ = open_split(config(copies, "wds"), "train")
    assert reader.class_names == CLASS_NAMES
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for path in copies["wds"].iterdir():
        os.link(path, renamed / path.name)
    shard = renamed / "imagenet1k-train-0003.tar"
    shard.unlink()
    with tarfile.open(copies["wds"] / shard.name) as source, tarfile.open(shard, "w") as target:
        for member in source:
            data = source.extractfile(member).read()
            if member.name.endswith(".json"):
                data = json.dumps({**json.loads(data), "class_name": "another name"}).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    with pytest.raises(UserError, match=r"label \d is .* but 'another name' in imagenet1k-train-0003.tar"):
        open_split(tiny_config(renamed, name=DatasetKind.wds, val_split="validation"), "train")


def test_verify_data_names_a_bad_member_by_shard_and_key(copies, tmp_path):
    folder = _copy_tree(copies["folder"], tmp_path / "folder")
    bad = folder / "train" / WNIDS[2] / f"{WNIDS[2]}_3.JPEG"
    data = bad.read_bytes()
    bad.unlink()
    bad.write_bytes(data[: len(data) // 3])  # truncated
    hub = make_hub_shards(folder, tmp_path / "wds")
    cfg = tiny_config(hub, name=DatasetKind.wds, val_split="validation")
    found = list(scan_split(cfg, "train", processes=1))
    assert len(found) == 1 and found[0][0].endswith(f".tar:{WNIDS[2]}_3.jpg")
    with tarfile.open(Path(found[0][0].rsplit(":", 1)[0])) as tar:
        assert f"{WNIDS[2]}_3.jpg" in tar.getnames()


def test_parquet_rows_are_read_in_place_through_their_row_group(copies):
    reader, _ = open_split(config(copies, "parquet"), "train")
    assert reader.row_group.max() > 0 and len(reader.files) == 2
    first = reader.source(0)
    assert first.name.endswith(f":{reader.row_group[0]}/{reader.row[0]}:{WNIDS[0]}_1.JPEG")
    assert reader.class_names == CLASS_NAMES
    assert io.BytesIO(first.read()).getvalue()[:2] == b"\xff\xd8"


# Training on each copy: SIGKILLed mid-epoch and relaunched, it ends bitwise equal to the uninterrupted run
# on the folder (runs shared by the tests below: one uninterrupted, one killed + relaunched per copy).


@pytest.fixture(scope="module")
def copy_runs(copies, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("copy_runs")
    data = [o for o in TINY_DATA if o != "data=synthetic"]

    def overrides(kind: str) -> list[str]:
        return [*data, f"data={kind}", f"data.root={copies[kind]}", *EQUAL_RUN]

    runs = {"folder": base / "folder"}
    run_train(runs["folder"], overrides("folder"))
    for kind in KINDS:
        runs[kind] = base / kind
        killed = run_train(runs[kind], overrides(kind), check=False,
                           env=cli_env(DELVING_KILL_AT_STEP=str(KILL_STEP)))  # fmt: skip
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        run_train(runs[kind], [*overrides(kind), "resume=auto"])
    return runs


@pytest.mark.slow
def test_a_run_killed_and_relaunched_on_any_copy_equals_the_folders_run_bitwise(copy_runs, copies):
    expected = Checkpoint.load(copy_runs["folder"] / "last.pt")
    assert expected.train_state["global_step"] == 12  # 48 images / batch 8 = 6 steps, 2 epochs
    for kind in KINDS:
        got = Checkpoint.load(copy_runs[kind] / "last.pt")
        assert all(torch.equal(got.model[k], expected.model[k]) for k in expected.model), kind
        assert got.data_copy == {"kind": kind, "root": os.path.realpath(copies[kind]), "split": "train",
                                 "samples": 48, "classes": 4}  # fmt: skip


@pytest.mark.slow
def test_delving_eval_scores_a_checkpoint_on_another_copy_of_the_same_classes(copy_runs, copies, tmp_path):
    """Trained on parquet, scored on the hub's shards and on the folder: the same predictions."""
    checkpoint = copy_runs["parquet"] / "last.pt"
    outputs = {}
    for kind in ("wds", "folder"):
        outputs[kind] = tmp_path / f"{kind}.npz"
        result = warm.run(
            [str(Path(sys.executable).parent / "delving-eval"), f"checkpoint={checkpoint}", f"data={kind}",
             f"data.root={copies[kind]}", f"data.val_split={'validation' if kind == 'wds' else 'val'}",
             "eval=center", *TINY_DATA[-5:], "device=cpu", f"output={outputs[kind]}"],
            env=cli_env(), cwd=tmp_path, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    wds, folder = (np.load(outputs[kind], allow_pickle=False) for kind in ("wds", "folder"))
    np.testing.assert_array_equal(wds["probs"], folder["probs"])
    np.testing.assert_array_equal(wds["labels"], folder["labels"])
    metadata = json.loads(str(wds["metadata"]))
    assert metadata["trained_on"]["kind"] == "parquet" and metadata["dataset"]["name"] == "wds"


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_the_header_scan_finds_what_tarfile_finds(tmp_path, fmt):
    """Long names (GNU 'L', pax 'path', ustar prefix), non-ASCII names, folders: the same members, offsets
    and small members' bytes as Python's tarfile, which reads every header the slow way."""
    long_name = "d" * 60 + "/" + "y" * 60 + ".jpg"
    members = [
        (long_name, b"J" * 700),
        ("k.cls", b"3"),
        ("dir/k.json", b'{"a": 1}'),
        ("é" * 30 + ".cls", b"1"),
    ]
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("sub")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
    small = hub_shards._is_small_member
    with tarfile.open(path) as tar:
        expected = [(m.name, m.offset_data, m.size, tar.extractfile(m).read() if small(m.name) else None)
                    for m in tar if m.isfile()]  # fmt: skip
    assert list(hub_shards.tar_members(path, small)) == expected
    assert [name for name, *_ in expected] == [name for name, _ in members]
