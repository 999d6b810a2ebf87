"""delving-eval and the trainer's final evaluation as a user meets them: where the file goes, what it records,
which inputs are refused before any work, unreadable images, shards, class lists and progress lines."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.data import make_folder_dataset
from helpers.evaluation import TINY_MODEL, folder_data_config, save_checkpoint, tiny_model, write_image_folder
from omegaconf import OmegaConf

from delving.checkpoint import file_sha256
from delving.data.config import DataConfig, DatasetKind
from delving.data.datasets import ClassListError
from delving.data.decode import TooManyBadImagesError
from delving.data.shards import write_shards
from delving.dist import DistributedContext
from delving.evaluation import EvalConfig, evaluate, load_predictions
from delving.evaluation.app import EvalOutputError, final_evaluation, run_eval
from delving.evaluation.config import EvaluateAppConfig, Protocol

SIZES = [(80, 64), (160, 128), (64, 64), (64, 96), (100, 70)]
CLASSES = ["class_0", "class_1", "class_2"]
SINGLE = DistributedContext(0, 1, 0, torch.device("cpu"))
PROVENANCE_KEYS = {"checkpoint", "model_config", "eval_config", "data_config", "arithmetic"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"), SIZES)


def _data_dict(root: Path) -> dict:
    return {"name": "folder", "root": str(root), "crop_size": 64, "use_draft": False, "num_workers": 0}


def _run_dir(tmp_path: Path, root: Path, classes: list[str] | None = CLASSES) -> Path:
    """A run directory as the trainer leaves it: last.pt and its own final-evaluation file."""
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run / "last.pt", tiny_model(), dict(TINY_MODEL), _data_dict(root), classes)
    (run / "predictions-ten_view.npz").write_bytes(b"the trainer's file")
    return run


def _eval_cfg(checkpoint: Path, **options):
    eval_options = options.pop("eval", {"protocol": Protocol.ten_view})
    return OmegaConf.structured(
        EvaluateAppConfig(
            checkpoint=str(checkpoint), eval=EvalConfig(**eval_options), device="cpu", **options
        )
    )


def test_a_run_directory_is_evaluated_next_to_its_checkpoint(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run_dir(tmp_path, data_root)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = run_eval(_eval_cfg(run))
    assert path == run / "predictions-ten_view-s256.npz"
    assert (run / "predictions-ten_view.npz").read_bytes() == b"the trainer's file"  # never overwritten
    assert list(elsewhere.iterdir()) == []  # nothing in the working directory
    meta = load_predictions(path).metadata
    assert meta.keys() >= PROVENANCE_KEYS and "config" not in meta
    assert meta["checkpoint"] == {"path": str(run / "last.pt"), "sha256": file_sha256(run / "last.pt")}
    assert meta["eval_config"]["protocol"] == "ten_view" and meta["data_config"]["name"] == "folder"
    out, err = capsys.readouterr()
    assert f"predictions: {path}" in out and "total time: " in out
    assert "eval ten_view: 5 images to go" in err and "eval ten_view: 5 images in " in err
    # Other settings get other names: the scales, no flips, another split, a first-N limit.
    cfg = _eval_cfg(run, eval={"protocol": "multiscale", "scales": [256, 384], "flips": False, "limit": 2})
    assert run_eval(cfg) == run / "predictions-multiscale-s256_384-noflip-first2.npz"


def test_output_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run_dir(tmp_path, data_root)

    def no_work(*_args, **_kwargs):
        raise AssertionError("the checkpoint was loaded before the output was checked")

    monkeypatch.setattr("delving.evaluation.app.load_model", no_work)
    with pytest.raises(EvalOutputError, match=r"output=.* is a folder: give a file name"):
        run_eval(_eval_cfg(run, output=str(tmp_path)))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(EvalOutputError, match=r"a_file is a file, so no folder can be made there"):
        run_eval(_eval_cfg(run, output=str(tmp_path / "a_file" / "p.npz")))


def test_renamed_class_folders_are_refused_naming_the_first_difference(
    tmp_path: Path, data_root: Path
) -> None:
    # The same number of classes, one folder renamed: the old code scored against shifted labels.
    root = tmp_path / "renamed"
    shutil.copytree(data_root, root)
    (root / "val" / "class_1").rename(root / "val" / "class_9")
    run = _run_dir(tmp_path, data_root)
    cfg = _eval_cfg(run, output=str(tmp_path / "p.npz"))
    cfg.data = OmegaConf.structured(DataConfig(**{**_data_dict(root), "name": DatasetKind.folder}))
    with pytest.raises(ClassListError, match=r"first difference at position 1: 'class_1' vs 'class_2'"):
        run_eval(cfg)
    assert not (tmp_path / "p.npz").exists()


def test_a_checkpoint_without_a_class_list_warns_once(
    tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture
) -> None:
    run = _run_dir(tmp_path, data_root, classes=None)
    assert run_eval(_eval_cfg(run)).is_file()
    assert capsys.readouterr().err.count("records no class list") == 1


def test_unreadable_images_are_dropped_counted_and_reported(tmp_path: Path, data_root: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    (root / "val" / "class_0" / "zz_empty.JPEG").write_bytes(b"")
    cfg = DataConfig(**{**_data_dict(root), "name": DatasetKind.folder, "max_bad_fraction": 0.5})
    model = tiny_model()
    result = evaluate(model, cfg, EvalConfig(protocol="center"))
    clean = evaluate(model, folder_data_config(data_root), EvalConfig(protocol="center"))
    assert (result.num_images, result.skipped_images) == (5, 1)
    assert result.metadata["skipped_ids"] == ["class_0/zz_empty.JPEG"]
    assert result.metadata["skipped_images"] == 1 and result.ids == clean.ids
    assert (result.top1_error, result.top5_error) == (clean.top1_error, clean.top5_error)  # over the 5 scored
    with pytest.raises(TooManyBadImagesError, match=r"zz_empty.JPEG: zero-byte file"):
        evaluate(model, DataConfig(**{**vars(cfg), "max_bad_fraction": 0.1}), EvalConfig(protocol="center"))


def test_loader_workers_end_with_the_evaluation(tmp_path: Path, data_root: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    model = tiny_model()
    evaluate(model, folder_data_config(root), EvalConfig(protocol="center", num_workers=2))
    assert multiprocessing.active_children() == []
    for name in ("a.JPEG", "b.JPEG"):
        (root / "val" / "class_2" / name).write_bytes(b"")
    with pytest.raises(TooManyBadImagesError):
        evaluate(model, folder_data_config(root), EvalConfig(protocol="center", num_workers=2))
    assert multiprocessing.active_children() == []  # also when an error stops the evaluation


def test_evaluation_workers_are_capped_at_the_cores(data_root: Path, monkeypatch) -> None:
    """eval.num_workers=4 on 2 cores: 2 workers, and no torch warning about too many."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    model = tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch: "This DataLoader will create 4 worker processes in total..."
        capped = evaluate(model, folder_data_config(data_root), EvalConfig(protocol="center", num_workers=4))
    assert (
        capped.top1_error
        == evaluate(model, folder_data_config(data_root), EvalConfig(protocol="center")).top1_error
    )


def test_shards_are_evaluated_like_the_folders_they_came_from(tmp_path: Path) -> None:
    source = make_folder_dataset(
        tmp_path / "folder", classes=3, train_per_class=2, val_per_class=3, size=(72, 64)
    )
    for split in ("train", "val"):
        write_shards(source, split, tmp_path / "shards", max_samples=4)
    model = tiny_model()
    options = {"crop_size": 64, "scale_min": 64, "scale_max": 64, "test_scale": 64, "use_draft": False}
    folder = evaluate(
        model, DataConfig(name=DatasetKind.folder, root=str(source), num_workers=0, **options), EvalConfig()
    )
    shards_cfg = DataConfig(name=DatasetKind.shards, root=str(tmp_path / "shards"), num_workers=0, **options)
    shards = evaluate(model, shards_cfg, EvalConfig(), classes=["c0", "c1", "c2"])
    assert shards.num_images == folder.num_images == 9 and shards.metadata["dataset"]["name"] == "shards"
    # The shards hold the files in a shuffled order under their listing position: match them up.
    order = np.argsort([int(key) for key in shards.ids])
    np.testing.assert_allclose(shards.probs[order], folder.probs, atol=1e-6)
    assert (shards.top1_error, shards.top5_error) == (folder.top1_error, folder.top5_error)


def test_final_evaluation_writes_the_run_file_with_delving_evals_keys(
    tmp_path: Path, data_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = _run_dir(tmp_path, data_root)
    config = {"model": dict(TINY_MODEL), "data": _data_dict(data_root), "train": {"epochs": 1}}
    data_cfg = folder_data_config(data_root)
    eval_cfg = EvalConfig(protocol=Protocol.dense, num_workers=2)
    with caplog.at_level(logging.INFO, logger="delving"):
        summary = final_evaluation(
            tiny_model(), config, data_cfg, eval_cfg, run, SINGLE, run / "last.pt", CLASSES
        )
    path = run / "predictions-dense.npz"
    assert summary == {
        "top1_error": summary["top1_error"],
        "top5_error": summary["top5_error"],
        "num_images": 5,
        "skipped_images": 0,
        "protocol": "dense",
        "predictions": str(path),
    }
    json.dumps(summary)  # it goes into metrics.jsonl and finished.json
    meta = load_predictions(path).metadata
    assert PROVENANCE_KEYS | {"train_config"} <= meta.keys() and meta["train_config"] == config
    assert meta["checkpoint"]["sha256"] == file_sha256(run / "last.pt")
    assert meta["top1_error"] == summary["top1_error"]
    logged = caplog.text
    assert "final evaluation of" in logged and "| model_a | dense | [256] -> [73] | True | 5 |" in logged
    assert "eval dense: 5 images in " in logged  # the progress lines go to the run's log
    assert multiprocessing.active_children() == []
    with pytest.raises(ClassListError, match="first difference at position 0"):
        final_evaluation(
            tiny_model(), config, data_cfg, eval_cfg, run, SINGLE, run / "last.pt", ["x", "y", "z"]
        )


def test_the_default_output_names_the_chosen_data_set_by_its_value(tmp_path: Path) -> None:
    from delving.evaluation.app import default_output

    chosen = OmegaConf.structured(DataConfig(name=DatasetKind.synthetic))
    path = default_output(tmp_path / "last.pt", EvalConfig(protocol="dense", scales=[384]), "val", chosen)
    assert path == tmp_path / "predictions-dense-s384-synthetic.npz"
