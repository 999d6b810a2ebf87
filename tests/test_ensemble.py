"""delving-ensemble: means and weights on known files, greedy selection, per-class analysis, the paper's
numbers beside ours, and a clear error (with nothing written) for every kind of mismatched or broken file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.configs import compose_config
from helpers.evaluation import make_predictions

from delving.evaluation.app import run_ensemble
from delving.evaluation.ensemble import (
    EnsembleMismatchError,
    EnsembleOptionError,
    check_compatible,
    class_summary,
    combine,
    greedy_select,
    member_names,
    per_class_changes,
    split_rows,
)
from delving.evaluation.ensemble_report import EnsembleOptions, build_ensemble_report
from delving.evaluation.metrics import topk_errors
from delving.evaluation.predictions import PredictionsFileError, save_predictions

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LABELS = [0, 1, 2, 0]
PROBS_A = [[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.3, 0.6, 0.1]]  # top-1 right on images 0, 2
PROBS_B = [[0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.7, 0.2, 0.1]]  # right on 1, 2, 3


def test_mean_and_weighted_mean_of_known_files() -> None:
    a, b = np.array(PROBS_A), np.array(PROBS_B)
    labels = np.array(LABELS)
    assert topk_errors(a, labels, ks=(1,))[1] == 50.0 and topk_errors(b, labels, ks=(1,))[1] == 25.0
    mean = combine([a, b])
    np.testing.assert_allclose(mean[0], [0.4, 0.4, 0.2])  # a tie that the lower index (the label) wins
    assert topk_errors(mean, labels, ks=(1,))[1] == 0.0
    weighted = combine([a, b], [3, 1])
    np.testing.assert_allclose(weighted[3], [0.4, 0.5, 0.1])
    assert topk_errors(weighted, labels, ks=(1,))[1] == 25.0
    with pytest.raises(ValueError, match="2 weights for 3"):
        combine([a, b, a], [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        combine([a, b], [1, -1])


def _one_hot_model(
    labels: np.ndarray, right: np.ndarray, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Probabilities that put the true class first where `right`, and last (top-5 wrong) elsewhere."""
    probs = rng.uniform(0.5, 1.0, size=(len(labels), num_classes))
    rows = np.arange(len(labels))
    probs[rows, labels] = np.where(right, 2.0, 0.01)
    return probs / probs.sum(1, keepdims=True)


def test_greedy_selection_picks_complementary_models_and_skips_noise() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=400)
    first_half = np.arange(400) < 200
    good_a = _one_hot_model(labels, first_half | (rng.random(400) < 0.3), 10, rng)
    good_b = _one_hot_model(labels, ~first_half | (rng.random(400) < 0.3), 10, rng)
    bad = _one_hot_model(labels, rng.random(400) < 0.05, 10, rng)
    select_rows, report_rows = split_rows(400, 0.5, seed=1)
    assert len(select_rows) == 200 and not set(select_rows) & set(report_rows)
    selection = greedy_select([bad, good_b, good_a], labels, select_rows)
    singles = [topk_errors(p[select_rows], labels[select_rows])[5] for p in (bad, good_b, good_a)]
    assert selection.chosen[0] == int(np.argmin(singles)) and sorted(selection.chosen) == [1, 2]
    top5 = [t5 for _, t5, _ in selection.trace]
    assert top5 == sorted(top5, reverse=True) and top5[-1] < min(singles)


def test_per_class_analysis_on_known_arrays() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    right = np.array([True, True, True, False, False, False])
    rng = np.random.default_rng(0)
    probs = _one_hot_model(labels, right, 7, rng)
    names = ["tench", "goldfish", "letter opener", "d", "e", "f", "g"]
    summary = class_summary(probs, labels, names, worst=2)
    assert (summary.zero_error_classes, summary.classes_scored) == (1, 3)
    assert summary.worst == [("letter opener", 100.0), ("goldfish", 50.0)]
    baseline = _one_hot_model(labels, np.array([True, False, False, True, True, False]), 7, rng)
    changes = per_class_changes(baseline, probs, labels, names)
    assert (changes.fell, changes.same, changes.rose) == (1, 1, 1)
    assert changes.changes == [("tench", 50.0, 0.0), ("letter opener", 50.0, 100.0)]


def _files(tmp_path: Path, **changes) -> list[Path]:
    a = make_predictions(PROBS_A, LABELS)
    b = make_predictions(PROBS_B, LABELS, model="model_b", **changes)
    return [save_predictions(tmp_path / "a.npz", a), save_predictions(tmp_path / "b.npz", b)]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dataset": "imagenet"}, r"a and b are over different data sets: folder/val vs imagenet/val"),
        ({"split": "train"}, r"different data sets: folder/val vs folder/train"),
        ({"classes": ["n00000001", "n00000000", "n00000002"]}, r"same classes in a different order"),
        (
            {"classes": ["n00000000", "n00000001", "x"]},
            r"different class lists \(3 vs 3 classes, first difference at position 2",
        ),
        (
            {"ids": ["c/img_0.JPEG", "c/img_1.JPEG", "c/img_2.JPEG", "other.JPEG"]},
            r"different images: 1 only in a \(e\.g\. \['c/img_3\.JPEG'\]\), 1 only in b",
        ),
        (
            {"ids": ["c/img_1.JPEG", "c/img_0.JPEG", "c/img_2.JPEG", "c/img_3.JPEG"]},
            r"same images in a different order",
        ),
        ({"labels": [0, 1, 2, 1]}, r"different labels to 1 images, e\.g\. c/img_3\.JPEG: 0 vs 1"),
    ],
)
def test_every_mismatch_is_a_clear_error_and_writes_nothing(
    tmp_path: Path, changes: dict, message: str
) -> None:
    labels = changes.pop("labels", LABELS)
    a = make_predictions(PROBS_A, LABELS)
    b = make_predictions(PROBS_B, labels, **changes)
    with pytest.raises(EnsembleMismatchError, match=message):
        check_compatible([a, b], ["a", "b"])
    files = [save_predictions(tmp_path / "a.npz", a), save_predictions(tmp_path / "b.npz", b)]
    with pytest.raises(EnsembleMismatchError, match=message):
        run_ensemble(_ensemble_cfg(files, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _ensemble_cfg(files: list[Path], out: Path, *overrides: str):
    return compose_config(
        [f"files=[{','.join(map(str, files))}]", f"output_dir={out}", *overrides], config_name="ensemble"
    )


def test_broken_files_are_clear_errors_and_write_nothing(tmp_path: Path) -> None:
    files = _files(tmp_path)
    data = files[1].read_bytes()
    files[1].write_bytes(data[: len(data) - 100])
    with pytest.raises(PredictionsFileError, match=r"b\.npz: unreadable or truncated"):
        run_ensemble(_ensemble_cfg(files, tmp_path / "out", "save_predictions=true"))
    with pytest.raises(PredictionsFileError, match=r"missing\.npz: no such file"):
        run_ensemble(_ensemble_cfg([files[0], tmp_path / "missing.npz"], tmp_path / "out"))
    with pytest.raises(ValueError, match="unknown paper table 'table9'"):
        run_ensemble(_ensemble_cfg(files[:1], tmp_path / "out", "paper_table=table9"))
    assert not (tmp_path / "out").exists()


def test_two_protocols_of_one_model_are_not_counted_as_two_models(tmp_path: Path) -> None:
    checkpoint = {"path": "/runs/a/last.pt", "sha256": "ab" * 32}
    files = []
    for name, protocol in (("dense", "dense"), ("ten", "ten_view")):
        predictions = make_predictions(PROBS_A, LABELS, protocol=protocol)
        predictions.metadata["checkpoint"] = checkpoint
        files.append(save_predictions(tmp_path / f"{name}.npz", predictions))
    files.append(save_predictions(tmp_path / "b.npz", make_predictions(PROBS_B, LABELS, model="model_b")))
    out = run_ensemble(_ensemble_cfg(files[:2], tmp_path / "one"))
    assert "| **ensemble** (2 predictions of 1 model) |" in (out / "ensemble.md").read_text()
    out = run_ensemble(_ensemble_cfg(files, tmp_path / "two"))
    assert "| **ensemble** (3 predictions of 2 models) |" in (out / "ensemble.md").read_text()


def test_delving_ensemble_report_with_the_papers_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    files = _files(tmp_path)
    baseline = save_predictions(tmp_path / "old.npz", make_predictions(PROBS_A, LABELS))
    out = run_ensemble(
        _ensemble_cfg(
            files, tmp_path / "out", "paper_table=table6", f"baseline={baseline}", "save_predictions=true"
        )
    )
    report = json.loads((out / "ensemble.json").read_text())
    assert [(m["name"], m["top1"]) for m in report["models"]] == [("a", 50.0), ("b", 25.0)]
    assert report["models"][0]["paper"] == {"label": "MSRA (A, PReLU)", "top1": 22.97, "top5": 6.28}
    assert report["models"][1]["paper"] == {"label": "MSRA (B, PReLU)", "top1": 22.85, "top5": 6.27}
    assert (report["ensemble"]["top1"], report["ensemble"]["top5"]) == (0.0, 0.0)
    assert report["per_class"]["zero_error_classes"] == 3
    assert report["per_class"]["vs_baseline"]["same"] == 3  # top-5 of 3 classes: nothing can move
    markdown = (out / "ensemble.md").read_text()
    assert (
        "| a | model_a prelu | multiscale [256, 384, 480] | 50.00 | 0.00 | MSRA (A, PReLU) | 22.97 | 6.28 |"
        in markdown
    )
    assert "| **ensemble** (2 models) | | | 0.00 | 0.00 |" in markdown
    assert markdown in capsys.readouterr().out
    saved = np.load(out / "ensemble.npz")
    np.testing.assert_allclose(saved["probs"], combine([np.array(PROBS_A), np.array(PROBS_B)]), atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["ensemble.json", "ensemble.md", "ensemble.npz"]


def test_selection_report_scores_only_held_out_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, size=60)
    preds = [
        make_predictions(_one_hot_model(labels, rng.random(60) < p, 10, rng), labels, model=f"m{i}")
        for i, p in enumerate((0.8, 0.6, 0.05))
    ]
    options = EnsembleOptions(select=True, select_fraction=0.5, seed=0)
    built = build_ensemble_report(preds, ["m0", "m1", "m2"], options)
    report, probs, rows = built.to_json(), built.probs, built.rows
    assert len(rows) == 30 and report["data"]["scored_images"] == 30
    chosen = [["m0", "m1", "m2"].index(n) for n in report["selection"]["chosen"]]
    expected = topk_errors(combine([preds[m].probs[rows] for m in chosen]), labels[rows])
    assert report["selection"]["top5"] == pytest.approx(expected[5], abs=1e-4)
    assert "m2" not in report["selection"]["chosen"]
    np.testing.assert_allclose(probs, combine([preds[m].probs[rows] for m in chosen]))


def _structured_cfg(files: list[Path], out: Path, **options):
    from omegaconf import OmegaConf

    from delving.evaluation.config import EnsembleAppConfig

    return OmegaConf.structured(
        EnsembleAppConfig(files=[str(f) for f in files], output_dir=str(out), **options)
    )


@pytest.mark.parametrize("weights", [[float("nan"), 1.0], [float("inf"), 1.0], [-1.0, 2.0], [0.0, 0.0]])
def test_weights_that_are_not_finite_and_non_negative_are_refused(
    tmp_path: Path, weights: list[float]
) -> None:
    files = _files(tmp_path)
    with pytest.raises(EnsembleOptionError, match="weights must be finite and non-negative"):
        run_ensemble(_structured_cfg(files, tmp_path / "out", weights=weights))
    assert not (tmp_path / "out").exists()


def test_the_trainers_own_files_are_named_after_their_run_directories(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    files = []
    for run, probs in (("model_a_run", PROBS_A), ("model_b_run", PROBS_B)):
        files.append(
            save_predictions(tmp_path / run / "predictions-multiscale.npz", make_predictions(probs, LABELS))
        )
    out = run_ensemble(_structured_cfg(files, tmp_path / "out"))
    report = json.loads((out / "ensemble.json").read_text())
    assert [m["name"] for m in report["models"]] == ["model_a_run", "model_b_run"]
    assert report["files"]["model_a_run"] == str(files[0])
    assert "total time: " in capsys.readouterr().out


def test_member_names_stay_short_and_unique(tmp_path: Path) -> None:
    assert member_names(["x/a.npz", "y/b.npz"]) == ["a", "b"]
    assert member_names(["r1/predictions-dense.npz", "r2/predictions-dense.npz"]) == ["r1", "r2"]
    mixed = ["r1/predictions-dense.npz", "r1/predictions-ten_view.npz", "r2/predictions-dense.npz"]
    assert member_names(mixed) == ["r1/predictions-dense", "r1/predictions-ten_view", "r2/predictions-dense"]
    deep = ["a/run/predictions-dense.npz", "b/run/predictions-dense.npz"]
    assert member_names(deep) == ["a/run/predictions-dense", "b/run/predictions-dense"]
    with pytest.raises(EnsembleOptionError, match="twice"):
        member_names(["x/a.npz", "x/./a.npz"])
