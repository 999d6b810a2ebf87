"""Predictions files: NumPy-only reading, atomic writes, and clear errors for partial or corrupt files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.evaluation import make_predictions

from delving.evaluation.predictions import PredictionsFileError, load_predictions, save_predictions


def _sample() -> tuple[np.ndarray, list[int]]:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]], dtype=np.float32)
    return probs, [0, 2, 0]


def test_round_trip_and_numpy_only_reading(tmp_path: Path) -> None:
    probs, labels = _sample()
    path = save_predictions(tmp_path / "sub" / "a.npz", make_predictions(probs, labels))
    assert [p.name for p in path.parent.iterdir()] == ["a.npz"]  # no temp file left behind
    with np.load(path, allow_pickle=False) as raw:  # what a user without this package does
        assert raw["ids"].tolist() == ["c/img_0.JPEG", "c/img_1.JPEG", "c/img_2.JPEG"]
        np.testing.assert_array_equal(raw["probs"], probs)
        meta = json.loads(str(raw["metadata"]))
    assert meta["num_images"] == 3 and meta["format_version"] == 1 and meta["protocol"] == "multiscale"
    loaded = load_predictions(path)
    np.testing.assert_array_equal(loaded.labels, labels)
    assert loaded.classes == ["n00000000", "n00000001", "n00000002"]


def test_float16_storage(tmp_path: Path) -> None:
    probs, labels = _sample()
    pred = make_predictions(probs, labels)
    pred.probs = probs.astype(np.float16)
    loaded = load_predictions(save_predictions(tmp_path / "h.npz", pred))
    assert loaded.probs.dtype == np.float16
    np.testing.assert_allclose(loaded.probs, probs, atol=1e-3)


def test_inconsistent_predictions_are_not_written(tmp_path: Path) -> None:
    probs, labels = _sample()
    bad = make_predictions(probs * 2, labels)
    with pytest.raises(PredictionsFileError, match="do not sum to 1"):
        save_predictions(tmp_path / "bad.npz", bad)
    with pytest.raises(PredictionsFileError, match="labels outside"):
        save_predictions(tmp_path / "bad.npz", make_predictions(probs, [0, 3, 0]))
    with pytest.raises(PredictionsFileError, match="duplicate image ids"):
        save_predictions(tmp_path / "bad.npz", make_predictions(probs, labels, ids=["a", "a", "b"]))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_overwrite_keeps_the_old_file(tmp_path: Path) -> None:
    probs, labels = _sample()
    path = save_predictions(tmp_path / "a.npz", make_predictions(probs, labels))
    before = path.read_bytes()
    with pytest.raises(PredictionsFileError):
        save_predictions(path, make_predictions(probs * 3, labels))
    assert path.read_bytes() == before


def test_truncated_corrupt_missing_and_partial_files(tmp_path: Path) -> None:
    probs, labels = _sample()
    path = save_predictions(tmp_path / "a.npz", make_predictions(probs, labels))
    data = path.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(PredictionsFileError, match=r"truncated\.npz: unreadable or truncated"):
        load_predictions(tmp_path / "truncated.npz")
    with pytest.raises(PredictionsFileError, match=r"garbage\.npz: unreadable"):
        load_predictions(tmp_path / "garbage.npz")
    with pytest.raises(PredictionsFileError, match="no such file"):
        load_predictions(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", probs=probs)
    with pytest.raises(PredictionsFileError, match="not a predictions file: no ids, labels, metadata"):
        load_predictions(tmp_path / "other.npz")
    # A file whose arrays lost rows relative to its metadata (e.g. written by a crashed tool).
    meta = json.loads(str(np.load(path)["metadata"]))
    meta["num_images"] = 5
    np.savez(
        tmp_path / "partial.npz",
        ids=np.array(["a", "b", "c"]),
        labels=np.array(labels),
        probs=probs,
        metadata=np.array(json.dumps(meta)),
    )
    with pytest.raises(PredictionsFileError, match="partial file: 3 images, metadata says 5"):
        load_predictions(tmp_path / "partial.npz")


def test_negative_probabilities_are_refused(tmp_path: Path) -> None:
    probs = np.array([[1.2, -0.2, 0.0], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]], dtype=np.float32)  # rows sum to 1
    with pytest.raises(PredictionsFileError, match=r"bad\.npz: probs contain negative values"):
        save_predictions(tmp_path / "bad.npz", make_predictions(probs, [0, 2, 0]))


def _rewrite_metadata(path: Path, out: Path, change) -> Path:
    with np.load(path) as raw:
        arrays = {key: raw[key] for key in raw.files}
    meta = json.loads(str(arrays["metadata"]))
    arrays["metadata"] = np.array(json.dumps(change(meta)))
    np.savez(out, **arrays)
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: [m], r"metadata is a list, expected a JSON object"),
        (lambda m: {**m, "classes": "n0 n1 n2"}, r"metadata 'classes' is a string, expected a list"),
        (lambda m: {**m, "dataset": ["folder", "val"]}, r"metadata 'dataset' is a list, expected an object"),
        (lambda m: {**m, "model": "model_a"}, r"metadata 'model' is a string, expected an object"),
        (lambda m: {**m, "top1_error": None}, r"metadata 'top1_error' is null, expected a number"),
        (lambda m: {**m, "classes": [0, 1, 2]}, r"metadata 'classes' holds entries that are not strings"),
        (
            lambda m: {**m, "dataset": {"name": 3, "split": "val"}},
            r"metadata 'dataset' needs a string 'name'",
        ),
    ],
)
def test_metadata_of_the_wrong_json_type_names_the_file_and_key(tmp_path: Path, change, message: str) -> None:
    probs, labels = _sample()
    meta = {"top1_error": 1.0, "top5_error": 0.0, "model": {"name": "model_a"}}
    good = make_predictions(probs, labels)
    good.metadata.update(meta)
    path = save_predictions(tmp_path / "a.npz", good)
    bad = _rewrite_metadata(path, tmp_path / "typed.npz", change)
    with pytest.raises(PredictionsFileError, match=r"typed\.npz: " + message):
        load_predictions(bad)
