"""The paper's findings decided from seeded runs' predictions: numbers, verdicts, and refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.runs import REPO

from delving.evaluation.predictions import Predictions, save_predictions
from delving.paper import FINDINGS
from delving.report.evidence import FindingInputError, replicate_groups
from delving.report.findings import decide_all, findings_figure
from delving.report.report import build_report
from delving.report.runs import EvalRecord, Run, SlopeStats
from delving.report.stats import Verdict

CLASSES = 20
IMAGES = 1000


def _predictions(path: Path, wrong: np.ndarray, protocol: str, scales: list[int], shuffle: int) -> EvalRecord:
    """A predictions file whose top-1 is wrong exactly where `wrong` says (image ids in a shuffled order)."""
    labels = np.arange(IMAGES) % CLASSES
    # Right: the label at 0.9. Wrong: another class at 0.9 and the label at 0, last (wrong at top-5 too).
    probs = np.where(wrong[:, None], 0.1 / (CLASSES - 2), 0.1 / (CLASSES - 1)).astype(np.float32)
    probs = np.broadcast_to(probs, (IMAGES, CLASSES)).copy()
    guess = np.where(wrong, (labels + 1) % CLASSES, labels)
    probs[np.arange(IMAGES), labels] = 0.0
    probs[np.arange(IMAGES), guess] = 0.9
    ids = np.array([f"c{label:02d}/img{i:04d}.jpg" for i, label in enumerate(labels)])
    order = np.random.default_rng(shuffle).permutation(IMAGES)  # files need not list images in one order
    meta = {
        "classes": [f"c{i:02d}" for i in range(CLASSES)],
        "dataset": {"name": "synthetic", "split": "val"},
        "protocol": protocol,
    }
    save_predictions(path, Predictions(ids[order], labels[order], probs[order], {**meta, "scales": scales}))
    return EvalRecord(protocol, scales, float(wrong.mean() * 100), 0.0, IMAGES, str(path))


def _run(
    tmp: Path,
    experiment: str,
    seed: int,
    wrong: np.ndarray,
    protocol: str = "ten_view",
    scales: tuple[int, ...] = (256,),
    **model,
) -> Run:
    folder = tmp / f"{experiment}-{model.get('init', '')}-s{seed}"
    folder.mkdir()
    config = {"experiment_name": experiment, "seed": seed, "model": {"num_classes": CLASSES, **model}}
    run = Run(folder, config, overrides=[f"experiment={experiment}", f"seed={seed}"])
    run.evals = [_predictions(folder / f"predictions-{protocol}.npz", wrong, protocol, list(scales), seed)]
    return run


def _wrong(rate: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(IMAGES) < rate


@pytest.fixture
def table2_runs(tmp_path: Path) -> list[Run]:
    runs = []
    for seed in (0, 1, 2):
        for act, rate in (("relu", 0.50), ("prelu", 0.30), ("prelu_shared", 0.62)):
            wrong = _wrong(rate, int(rate * 100) + seed)
            runs.append(_run(tmp_path, f"table2_net14_{act}_mini", seed, wrong, name="net14", act=act))
    return runs


def _by_claim(results):
    return {(r.finding.source, r.finding.claim): r for r in results}


def test_table2_findings_are_decided_by_their_intervals(table2_runs: list[Run]) -> None:
    results = _by_claim(decide_all(table2_runs))
    wise = results["Table 2", "PReLU channel-wise beats ReLU (10-view top-1)"]
    shared = results["Table 2", "PReLU channel-shared beats ReLU"]
    equal = results["Table 2", "channel-wise ≈ channel-shared (within ±2 points)"]
    # The means are the seeds' exact error rates, whatever order each file lists its images in.
    relu_rates = [_wrong(0.50, 50 + s).mean() * 100 for s in range(3)]
    wise_rates = [_wrong(0.30, 30 + s).mean() * 100 for s in range(3)]
    assert wise.b.mean == pytest.approx(np.mean(relu_rates)) and wise.a.mean == pytest.approx(
        np.mean(wise_rates)
    )
    assert wise.difference.mean == pytest.approx(np.mean(wise_rates) - np.mean(relu_rates))
    assert wise.seeds == [0, 1, 2] and wise.a.seeds == 3 and wise.a.images == IMAGES
    assert wise.difference.high < -15 and wise.verdict is Verdict.HOLDS
    assert shared.difference.low > 5 and shared.verdict is Verdict.CONTRADICTED
    assert equal.verdict is Verdict.CONTRADICTED  # 32 points apart, far outside ±2
    # The findings of studies that were not run say so and decide nothing.
    fig3 = results["Fig. 3", "30-layer net, He init: converges"]
    assert fig3.verdict is None and "fig3_deep30" in fig3.missing


def test_a_difference_inside_the_noise_is_inconclusive(tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1, 2):
        runs.append(_run(tmp_path, "table2_net14_relu_mini", seed, _wrong(0.50, 10 + seed)))
        runs.append(_run(tmp_path, "table2_net14_prelu_mini", seed, _wrong(0.49, 20 + seed)))
    result = _by_claim(decide_all(runs))["Table 2", "PReLU channel-wise beats ReLU (10-view top-1)"]
    assert result.difference.low < 0 < result.difference.high and result.verdict is Verdict.INCONCLUSIVE


def test_init_findings_compare_with_chance_and_the_curves(tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1, 2):
        stalled = np.ones(IMAGES, dtype=bool)
        stalled[np.arange(IMAGES) % CLASSES == 0] = False  # always guesses class 0: exactly chance, 95 %
        for init, wrong, curve in (
            ("he_fan_out", _wrong(0.7, seed), [90.0, 80.0]),
            ("xavier", stalled, [95.0, 95.0]),
        ):
            run = _run(tmp_path, "fig3_deep30_mini", seed, wrong, "center", init=init)
            run.records = [
                {"type": "val", "epoch": e, "step": 10 * (e + 1), "val_top1_error": v}
                for e, v in enumerate(curve)
            ]
            runs.append(run)
    results = _by_claim(decide_all(runs))
    he = results["Fig. 3", "30-layer net, He init: converges"]
    xavier = results["Fig. 3", "30-layer net, Xavier init: stalls at chance (within ±2 points)"]
    assert he.b.mean == pytest.approx(95.0) and he.verdict is Verdict.HOLDS
    assert xavier.a.mean == pytest.approx(95.0) and xavier.difference.mean == pytest.approx(0.0)
    assert xavier.verdict is Verdict.HOLDS


def test_the_conv1_slope_finding_is_decided_over_seeds(tmp_path: Path) -> None:
    runs = []
    for seed, conv1 in ((0, 0.60), (1, 0.55), (2, 0.65)):
        run = _run(tmp_path, "table2_net14_prelu_mini", seed, _wrong(0.3, seed))
        run.slopes = [
            SlopeStats("conv1", 32, conv1, 0.1, 0, 1),
            SlopeStats("conv2_1", 64, 0.2, 0.1, 0, 1),
            SlopeStats("conv2_2", 64, 0.3, 0.1, 0, 1),
            SlopeStats("fc1", 4096, 0.9, 0.1, 0, 1),
        ]
        runs.append(run)
    result = _by_claim(decide_all(runs))[
        "Table 1",
        "channel-wise: conv1's learned slope is above the deeper convs' (mean slope, conv1 minus deeper)",
    ]
    # conv1 minus the mean of the deeper convs (fc1 left out): 0.35 on average, 0.30..0.40 over seeds.
    assert result.a.mean == pytest.approx(0.35) and result.a.images is None
    assert result.a.low == pytest.approx(0.35 - 4.302653 * 0.05 / np.sqrt(3), abs=1e-5)
    assert result.verdict is Verdict.HOLDS


def test_the_ensemble_finding_combines_each_seeds_members(tmp_path: Path) -> None:
    names = (
        "table4_model_a_relu_mini",
        "table4_model_a_prelu_mini",
        "table6_model_b_prelu_mini",
        "table6_model_c_prelu_mini",
    )
    runs = []
    for seed in (0, 1):
        for number, name in enumerate(names):
            # Each member wrong on its own quarter-plus of the images: their mean softmax is right far more.
            wrong = np.zeros(IMAGES, dtype=bool)
            wrong[(np.arange(IMAGES) + 250 * number + seed) % IMAGES < 400] = True
            runs.append(_run(tmp_path, name, seed, wrong, "multiscale", (256, 384, 480)))
    result = _by_claim(decide_all(runs))[
        "Table 7",
        "the ensemble of A-ReLU, A-PReLU, B, C (mean softmax) beats its best member (multi-scale, top-5)",
    ]
    assert result.b.mean == pytest.approx(40.0) and result.seeds == [0, 1]
    assert result.b_note == " (table4_model_a_relu)"  # all four tie at 40 %: the first named wins
    assert result.a.mean < 10.0 and result.verdict is Verdict.HOLDS


def test_replicates_scored_on_different_images_are_refused(table2_runs: list[Run], tmp_path: Path) -> None:
    odd = _run(tmp_path, "table2_net14_relu_mini", 7, _wrong(0.5, 7))
    meta_ids = np.load(odd.evals[0].source)["ids"]
    path = Path(odd.evals[0].source)
    labels = np.arange(IMAGES) % CLASSES
    probs = np.full((IMAGES, CLASSES), 1.0 / CLASSES, dtype=np.float32)
    meta = {
        "classes": [f"c{i:02d}" for i in range(CLASSES)],
        "dataset": {"name": "synthetic", "split": "val"},
        "protocol": "ten_view",
    }
    save_predictions(path, Predictions(np.char.add(meta_ids, "x"), labels, probs, {**meta, "scales": [256]}))
    with pytest.raises(FindingInputError, match="different validation images"):
        decide_all([*table2_runs, odd])


def test_the_report_leads_with_the_verdicts_and_plots_them(table2_runs: list[Run]) -> None:
    report = build_report(table2_runs, title="t")
    md = report.markdown
    assert md.index("## The paper's findings, decided by interval") < md.index("## Runs")
    assert "**holds**" in md and "**contradicted**" in md and "not run: no run of fig3_deep30" in md
    # Paper table: the seeds' mean with its interval, named as three seeds.
    assert "table2_net14_prelu_mini, 3 seeds" in md
    assert "| table2_net14_prelu_mini | ten_view 256 | 3 | 29.03 [" in md  # every test of every setting
    [axes] = report.figures["findings.png"].axes
    assert len(axes.get_yticklabels()) == 3 and axes.containers  # three decided error findings, error bars
    verdicts = {f["claim"]: f["verdict"] for f in report.summary["findings"]}
    assert verdicts["PReLU channel-shared beats ReLU"] == "contradicted"
    assert len(verdicts) == len(FINDINGS)
    assert [len(g) for g in replicate_groups(table2_runs)] == [3, 3, 3]


def test_the_two_sides_of_a_finding_must_score_the_same_images(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "table2_net14_relu_mini", 0, _wrong(0.5, 1))]
    odd = _run(tmp_path, "table2_net14_prelu_mini", 0, _wrong(0.3, 2))
    ids = np.char.add(np.load(odd.evals[0].source)["ids"], "x")  # same count, other images
    pred = Predictions(
        ids,
        np.arange(IMAGES) % CLASSES,
        np.full((IMAGES, CLASSES), 1 / CLASSES, np.float32),
        {
            "classes": [f"c{i:02d}" for i in range(CLASSES)],
            "dataset": {"name": "synthetic", "split": "val"},
            "protocol": "ten_view",
            "scales": [256],
        },
    )
    save_predictions(odd.evals[0].source, pred)
    with pytest.raises(FindingInputError, match="two sides are scored on different validation images"):
        decide_all([*runs, odd])


def test_two_predictions_files_of_one_test_are_refused_not_guessed(tmp_path: Path) -> None:
    run = _run(tmp_path, "table2_net14_relu_mini", 0, _wrong(0.5, 1))
    other = _predictions(
        run.path / "predictions-ten_view-s256-best.npz", _wrong(0.1, 2), "ten_view", [256], 0
    )
    run.evals.append(other)
    with pytest.raises(FindingInputError, match="2 predictions files of the ten_view test"):
        decide_all([run, _run(tmp_path, "table2_net14_prelu_mini", 0, _wrong(0.3, 2))])


def test_one_seed_decides_nothing_on_a_per_seed_number(tmp_path: Path) -> None:
    run = _run(tmp_path, "table2_net14_prelu_mini", 0, _wrong(0.3, 0))
    run.slopes = [SlopeStats("conv1", 32, 0.6, 0.1, 0, 1), SlopeStats("conv2_1", 64, 0.2, 0.1, 0, 1)]
    result = _by_claim(decide_all([run]))[
        "Table 1",
        "channel-wise: conv1's learned slope is above the deeper convs' (mean slope, conv1 minus deeper)",
    ]
    assert result.a.mean == pytest.approx(0.4) and result.verdict is Verdict.INCONCLUSIVE


def test_the_findings_plot_shows_whole_labels_and_counts_what_it_leaves_out(tmp_path: Path) -> None:
    """docs/results/findings.png once cut its labels at the left ("able 7: ...") and showed 20 of 22 unsaid."""
    spec = importlib.util.spec_from_file_location("redraw_findings", REPO / "scripts" / "redraw_findings.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    summary = json.loads((REPO / "docs" / "results" / "report.json").read_text(encoding="utf-8"))
    fig = findings_figure(script.results_from_summary(summary["findings"]))
    (ax,) = fig.axes
    assert ax.get_title().startswith("20 of the paper's 22 decided findings; the 2 learned-slope findings")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = ax.get_yticklabels()
    assert len(labels) == 20 and labels[0].get_text().startswith("Table 7: the ensemble")
    for label in [*labels, ax.title, ax.xaxis.label]:
        box = label.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y0 >= 0 and box.y1 <= fig.bbox.y1, (
            label.get_text()
        )
