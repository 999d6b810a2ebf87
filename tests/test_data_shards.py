import importlib.util
import itertools
import json
import tarfile
from pathlib import Path

import pytest
import torch
from helpers.data import make_folder_dataset, tiny_config
from webdataset import WebDataset

from delving.data.config import DatasetKind
from delving.data.datasets import ClassListError
from delving.data.loaders import EvalLoader, TrainLoader
from delving.data.readers import open_split
from delving.data.shards import ShardReader, write_shards

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_shards.py"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shards")
    source = make_folder_dataset(tmp / "folder", classes=3, train_per_class=13, val_per_class=3)
    spec = importlib.util.spec_from_file_location("make_shards", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(source), str(tmp / "shards"), "--max-samples", "10"])
    return source, tmp / "shards"


def test_shards_are_webdataset_tars_with_an_index(shards):
    _source, root = shards
    assert sorted(p.name for p in root.iterdir()) == [
        *(f"train-{i:06d}.tar" for i in range(4)),
        "train.json",
        "val-000000.tar",
        "val.json",
    ]
    index = json.loads((root / "train.json").read_text())
    assert index["classes"] == ["c0", "c1", "c2"]
    assert [len(s["keys"]) for s in index["shards"]] == [10, 10, 10, 9]
    samples = list(WebDataset(str(root / "train-000000.tar"), shardshuffle=False))
    assert len(samples) == 10 and {"__key__", "jpg", "cls"} <= set(samples[0])
    with tarfile.open(root / "train-000000.tar") as tar:
        assert len(tar.getnames()) == 20
    reader = ShardReader.open(root, "train")
    assert len(reader) == 39 and sorted(reader.labels.tolist()) == [0] * 13 + [1] * 13 + [2] * 13
    first = next(i for i in range(len(reader)) if reader.sample_id(i) == samples[0]["__key__"])
    assert reader.source(first).read() == samples[0]["jpg"]


def test_every_rank_gets_equal_batches_reproducibly(shards):
    _, root = shards
    cfg = tiny_config(root, name=DatasetKind.shards)
    loaders = [TrainLoader(cfg, batch_size=4, rank=r, world_size=3, seed=7) for r in range(3)]
    assert {loader.steps_per_epoch for loader in loaders} == {3}  # 39 // 12
    epochs = [[labels for _, labels in loader.epoch(0)] for loader in loaders]
    assert [[len(b) for b in e] for e in epochs] == [[4, 4, 4]] * 3
    again = [labels for _, labels in loaders[1].epoch(0)]
    assert all(torch.equal(a, b) for a, b in zip(epochs[1], again, strict=True))
    other_epoch = torch.cat([labels for _, labels in loaders[1].epoch(1)])
    assert not torch.equal(torch.cat(epochs[1]), other_epoch)


def test_shard_loader_resume_and_workers(shards):
    _, root = shards
    cfg = tiny_config(root, name=DatasetKind.shards)
    full = list(TrainLoader(cfg, batch_size=6, seed=1).epoch(3))
    tail = list(
        TrainLoader(tiny_config(root, name=DatasetKind.shards, num_workers=2), batch_size=6, seed=1).epoch(
            3, 4
        )
    )
    assert len(full) == 6 and len(tail) == 2
    for (a, la), (b, lb) in zip(full[4:], tail, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_shards_keep_the_folders_order_and_epoch_permutation(shards):
    """The shards store a shuffled order; the reader gives the folder's (the canonical order), so a seed
    draws the same images from both (before: shard by shard, another order than the folder's)."""
    source, root = shards
    reader = ShardReader.open(root, "train")
    folder, _ = open_split(tiny_config(source), "train")
    assert [reader.source(i).read() for i in range(len(reader))] == [
        Path(folder.source(i)).read_bytes() for i in range(len(folder))
    ]
    assert reader.epoch_order(seed=3, epoch=1).tolist() == folder.epoch_order(seed=3, epoch=1).tolist()
    shard_runs = [int(reader.shard_of[i]) for i in reader.epoch_order(seed=1, epoch=0)]
    assert sum(a != b for a, b in itertools.pairwise(shard_runs)) > 3  # reads move between shards


def test_shard_eval_covers_val_once(shards):
    _, root = shards
    cfg = tiny_config(root, name=DatasetKind.shards)
    labels = [
        torch.cat([lab for _, lab in EvalLoader(cfg, "val", 2, rank=r, world_size=2)]) for r in range(2)
    ]
    assert sorted(torch.cat(labels).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_train_and_val_shards_with_different_classes_are_refused(tmp_path):
    source = make_folder_dataset(tmp_path / "folder", classes=3, train_per_class=2, val_per_class=1)
    (source / "val" / "c2").rename(source / "val" / "c3")  # the same count, one name differs
    for split in ("train", "val"):
        write_shards(source, split, tmp_path / "shards", max_samples=10)
    cfg = tiny_config(tmp_path / "shards", name=DatasetKind.shards)
    message = (
        r"classes of split 'train' and split 'val' differ .*first difference at position 2: 'c2' vs 'c3'"
    )
    with pytest.raises(ClassListError, match=message):
        TrainLoader(cfg, batch_size=2)
    with pytest.raises(ClassListError, match=message):
        EvalLoader(cfg, "val", batch_size=2)


def test_each_shard_index_is_parsed_once_per_process(shards, monkeypatch):
    from delving.data import shards as shards_module

    _source, root = shards
    shards_module._OPENED.clear()
    parsed = []
    real_open = ShardReader.open.__func__
    monkeypatch.setattr(
        ShardReader, "open", classmethod(lambda cls, r, s: parsed.append(s) or real_open(cls, r, s))
    )
    cfg = tiny_config(root, name=DatasetKind.shards)
    TrainLoader(cfg, batch_size=4)  # checks val's classes too
    EvalLoader(cfg, "val", batch_size=4)  # checks train's classes too
    TrainLoader(cfg, batch_size=4)
    assert sorted(parsed) == ["train", "val"]
    (root / "val.json").touch()  # a rewritten index is read again
    EvalLoader(cfg, "val", batch_size=4)
    assert sorted(parsed) == ["train", "val", "val"]
