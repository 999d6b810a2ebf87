"""The mini experiments train end to end on tiny data, and delving-report builds its tables and plots from them."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from helpers import warm
from helpers.runs import REPO, cli_env

from delving.checkpoint import CheckpointError
from delving.report.app import ReportInputError, run_report
from delving.report.report import build_report, write_report
from delving.report.runs import Run, RunDirectoryError, label_runs, load_run, read_metrics

# Tiny data and few steps: the mini configs compose with these and train end to end in seconds.
TINY = (
    "data.synthetic_classes=4",
    "model.num_classes=4",
    "data.synthetic_train_per_class=4",
    "data.synthetic_val_per_class=2",
    "data.synthetic_min_size=56",
    "data.synthetic_max_size=64",
    "train.epochs=2",
    "train.batch_size=8",
    "logger.log_every_steps=1",
)
# One per model family and test protocol.
TINY_MINIS = {
    "table2_net14_prelu_mini": ("ten_view",),
    "fig3_deep30_mini": ("center", "model.init=xavier"),
    "table6_model_c_prelu_mini": ("multiscale",),
}


@pytest.fixture(scope="session")
def tiny_mini_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each of TINY_MINIS trained for 2 epochs of 2 steps (shared with the report tests)."""
    root = tmp_path_factory.mktemp("minis")
    runs = {}
    for name, (_, *overrides) in TINY_MINIS.items():
        run_dir = root / name
        command = [sys.executable, "-m", "delving.train", f"experiment={name}", *TINY, *overrides]
        result = warm.run([*command, f"hydra.run.dir={run_dir}"], env=cli_env(), cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        runs[name] = run_dir
    return runs


@pytest.mark.parametrize("name", TINY_MINIS)
def test_minis_train_and_evaluate_on_tiny_data(name: str, tiny_mini_runs: dict[str, Path]) -> None:
    run_dir = tiny_mini_runs[name]
    protocol = TINY_MINIS[name][0]
    assert (run_dir / "last.pt").is_file() and (run_dir / f"predictions-{protocol}.npz").is_file()
    text = (run_dir / "metrics.jsonl").read_text()
    assert '"type": "val"' in text and '"type": "final_eval"' in text


@pytest.fixture(scope="module")
def report(tiny_mini_runs: dict[str, Path]):
    runs = [load_run(path) for path in tiny_mini_runs.values()]
    ensemble = {
        "paper_table": {"key": "table7"},
        "data": {"name": "synthetic", "scored_images": 8},
        "ensemble": {"members": ["a", "b"], "top1": 12.5, "top5": 2.5},
    }
    return build_report(runs, ensembles=[ensemble], title="tiny", command="delving-report runs=[...]")


def _axes_text(fig) -> list[tuple[str, str, str]]:
    return [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def test_report_tables_match_runs_to_paper_rows(report) -> None:
    md = report.markdown
    assert "delving-report runs=[...]" in md
    assert "### Table 2: ReLU vs PReLU, 14-layer net, 10-view at scale 256" in md
    wise = next(line for line in md.splitlines() if line.startswith("| PReLU, channel-wise |"))
    assert "| 32.64 | 12.75 |" in wise and "table2_net14_prelu_mini | ten_view 256, 8 images" in wise
    assert "| ReLU | 33.82 | 13.34 | – | – | not run |" in md
    c_row = next(line for line in md.splitlines() if line.startswith("| MSRA (C, PReLU) |"))
    assert "table6_model_c_prelu_mini | multiscale 256/384/480" in c_row
    assert "| MSRA, PReLU-nets (6 models) | – | 4.94 | 12.50 | 2.50 | ensemble of a, b |" in md
    assert "## fig3: He vs Xavier init" in md and "| xavier |" in md
    # Table 1: the paper's slopes beside ours, every net14 layer.
    assert "| conv1 | 0.681 | 0.596 |" in md and "| fc2 | 0.031 | 0.075 |" in md


def test_report_plots_have_the_expected_axes(report) -> None:
    figures = report.figures
    assert set(figures) >= {"fig3_init.png", "table2_slopes.png", "table2_curves.png", "table6_curves.png"}
    init = _axes_text(figures["fig3_init.png"])
    assert init[0][0].startswith("fig3: net30, ReLU, He vs Xavier init\n")
    assert init[0][1:] == ("epoch (from 0, as the logs count)", "val top-1 error (%)")
    assert init[1][1:] == ("epoch (from 0, as the logs count)", "||dE/dW|| of the first and last conv")
    assert figures["fig3_init.png"].axes[0].get_legend_handles_labels()[1] == ["xavier", "chance"]
    slopes = figures["table2_slopes.png"].axes[0]
    assert slopes.get_ylabel() == "learned slope a"
    assert [t.get_text() for t in slopes.get_xticklabels()][:2] == ["conv1", "conv2_1"]
    assert "paper: wise" in slopes.get_legend_handles_labels()[1]
    assert _axes_text(figures["table2_curves.png"])[1][2] == "val top-1 error (%)"
    assert _axes_text(figures["table2_slope_history.png"])[0][2] == "mean slope a of the layer"


def test_report_files(report, tmp_path: Path) -> None:
    path = write_report(report, tmp_path)
    assert path.read_text().startswith("# tiny")
    for name in report.figures:
        assert (tmp_path / name).stat().st_size > 5_000, name
        assert f"]({name})" in path.read_text()
    assert (tmp_path / "report.json").is_file()


def test_report_app_reads_predictions_made_elsewhere(tiny_mini_runs: dict[str, Path], tmp_path: Path) -> None:
    run_dir = tiny_mini_runs["table2_net14_prelu_mini"]
    outside = tmp_path / "ten_view_copy.npz"
    outside.write_bytes((run_dir / "predictions-ten_view.npz").read_bytes())
    path = run_report([str(run_dir.parent)], [str(outside)], [], [], str(tmp_path / "out"), "t", "cmd")
    assert "table2_net14_prelu_mini" in path.read_text()
    with pytest.raises(ValueError, match="not in any of the runs"):
        run_report([str(tiny_mini_runs["fig3_deep30_mini"])], [str(outside)], [], [], str(tmp_path), "t", "c")


def _run(tmp_path: Path, folder: str, overrides: list[str], experiment: str = "default", **config) -> Run:
    return Run(tmp_path / folder, {"experiment_name": experiment, **config}, overrides=overrides)


def test_runs_of_one_experiment_are_labelled_by_the_overrides_that_differ(tmp_path: Path) -> None:
    # Two ad-hoc runs and a multirun sweep: once "default", "default", "0", "1" apart from the folders.
    runs = [
        _run(tmp_path, "a", ["model=net14", "optim.lr=0.1", "logger.wandb.mode=disabled"]),
        _run(tmp_path, "b", ["model=net14", "optim.lr=0.01", "resume=null"]),
        _run(tmp_path, "0", ["experiment=x", "model.act=relu"], "x", model={"act": "relu", "init": "he"}),
        _run(
            tmp_path,
            "1",
            ["experiment=x", "model.init=xavier"],
            "x",
            model={"act": "prelu", "init": "xavier"},
        ),
        _run(tmp_path, "solo", ["model=net14"], "table2"),
        _run(tmp_path, "again", ["model=net14"], "twice"),
        _run(tmp_path, "again2", ["model=net14"], "twice"),
    ]
    label_runs(runs)
    assert [run.title for run in runs] == [
        "default [a: optim.lr=0.1]",
        "default [b: optim.lr=0.01]",
        "x [0: model.act=relu model.init=he]",
        "x [1: model.act=prelu model.init=xavier]",
        "table2",
        "twice [again]",
        "twice [again2]",
    ]
    md = build_report(runs[:2], title="t").markdown
    assert "| default [a: optim.lr=0.1] | `a` |" in md and "| default [b: optim.lr=0.01] | `b` |" in md


def test_a_run_is_labelled_by_what_it_departs_in_and_a_group_override_by_its_name(tmp_path: Path) -> None:
    """The README's outputs/demo: the first run, a fine-tune, a longer run, a run on a folder, seeds of a sweep."""
    demo = {"data": {"name": "synthetic", "crop_size": 56}, "model": {"num_classes": 100}, "seed": 0}
    runs = [
        _run(tmp_path, "default", ["experiment=demo"], "demo", **demo),
        _run(tmp_path, "demo_ft20", ["experiment=demo", "model.num_classes=20", "data.synthetic_classes=20",
             "init_from=outputs/demo/default/last.pt", "train.epochs=2", "run_name=demo_ft20"], "demo", **demo),
        _run(tmp_path, "train.epochs-7", ["experiment=demo", "train.epochs=7"], "demo", **demo),
        _run(tmp_path, "photos", ["experiment=demo", "data=folder", "data.root=/data/my/photos", "run_name=photos",
             "model.num_classes=5"], "demo", **demo),
        _run(tmp_path, "ddp2", ["experiment=demo", "run_name=ddp2", "data.num_workers=1"], "demo", **demo),
        _run(tmp_path, "seed-1", ["experiment=demo", "seed=1"], "demo", **{**demo, "seed": 1}),
    ]  # fmt: skip
    label_runs(runs)
    assert [run.title for run in runs] == [
        "demo [default]",
        "demo [demo_ft20: model.num_classes=20 data.synthetic_classes=20 init_from=…/default/last.pt +1 more]",
        "demo [train.epochs-7]",  # the folder's name already says train.epochs=7
        "demo [photos: model.num_classes=5 data=folder data.root=…/my/photos]",  # not data={...}
        "demo [ddp2]",
        "demo [seed-1]",
    ]
    assert runs[5].setting_label == "demo"  # its replicates' label leaves the seed out


def test_every_ensemble_given_appears_in_the_report(tmp_path: Path) -> None:
    ensemble = {
        "paper_table": None,
        "data": {"name": "folder", "split": "val", "scored_images": 40},
        "ensemble": {"members": ["run_a", "run_b"], "weights": None, "top1": 30.0, "top5": 10.0},
        "selection": {"chosen": ["run_b"], "top1": 27.5, "top5": 7.5},
    }
    path = tmp_path / "ens" / "ensemble.json"
    path.parent.mkdir()
    path.write_text(json.dumps(ensemble))
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("experiment_name: demo\nmodel: {name: model_a}\n")
    (run_dir / "metrics.jsonl").write_text(
        '{"type": "val", "epoch": 0, "step": 2, "val_top1_error": 50.0}\n{"ty'
    )
    report = run_report([str(run_dir)], [], [str(path)], [], str(tmp_path / "out"), "t", "cmd").read_text()
    assert "## Ensembles (delving-ensemble)" in report
    assert (
        f"| {path} | run_a, run_b | equal | folder / val | 40 | 30.00 | 10.00 | run_b: 27.50 / 7.50 |"
        in report
    )
    with pytest.raises(ReportInputError, match=r"ensembles= .*missing\.json does not exist"):
        run_report([str(run_dir)], [], [str(tmp_path / "missing.json")], [], str(tmp_path / "o"), "t", "c")


def test_a_truncated_checkpoint_is_one_error_naming_it(tmp_path: Path) -> None:
    from helpers.evaluation import TINY_MODEL, save_checkpoint, tiny_model

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    last = save_checkpoint(run_dir / "last.pt", tiny_model(), dict(TINY_MODEL), {"name": "synthetic"})
    last.write_bytes(last.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=rf"checkpoint {last} is unreadable"):
        load_run(run_dir)


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path: Path, caplog) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"type": "val", "step": 1}\n{"type": "val", "st')
    assert read_metrics(metrics) == [{"type": "val", "step": 1}]
    assert "dropped its torn last line" in caplog.text
    metrics.write_text('{"type": "val", "st\n{"type": "val", "step": 1}\n')
    with pytest.raises(RunDirectoryError, match="line 1 is not JSON"):
        read_metrics(metrics)


def test_a_run_without_a_checkpoint_whose_class_count_came_from_the_data_has_no_chance_level(
    tmp_path: Path,
) -> None:
    from delving.report.init_study import _chance
    from delving.report.runs import Run

    unknown = Run(tmp_path, {"model": {"num_classes": None}})
    assert unknown.num_classes is None and math.isnan(_chance(unknown))
    assert _chance(Run(tmp_path, {"model": {"num_classes": 4}})) == 75.0


# ---------------------------------------------------------------- predictions of another state of last.pt (issue 26)


def _finished_run_with_predictions(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(run, the final checkpoint's predictions, predictions of an earlier last.pt): a tiny finished run, and
    a delving-eval file made from it mid-training (its recorded sha256 is the earlier file's)."""
    import numpy as np
    from helpers.evaluation import TINY_MODEL, make_predictions, save_checkpoint, tiny_model

    from delving.engine.run_dir import RunDirectory
    from delving.evaluation.predictions import save_predictions

    run = tmp_path / "run"
    earlier = save_checkpoint(
        tmp_path / "earlier.pt", tiny_model(seed=1), dict(TINY_MODEL), {"name": "synthetic"}
    )
    last = save_checkpoint(run / "last.pt", tiny_model(), dict(TINY_MODEL), {"name": "synthetic"})
    RunDirectory(run).mark_finished({"epochs": 2})
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=6).astype(np.float32)
    files = []
    for name, made_from, top1 in (("final", last, 50.0), ("mid_training", earlier, 66.67)):
        preds = make_predictions(probs, [0, 1, 2, 0, 1, 2], protocol="center")
        from delving.checkpoint import file_sha256

        preds.metadata.update(
            checkpoint={"path": str(last), "sha256": file_sha256(made_from)}, top1_error=top1, top5_error=0.0
        )
        files.append(save_predictions(run / f"predictions-center-s{name}.npz", preds))
    return run, files[0], files[1]


def test_the_report_leaves_out_predictions_of_another_state_of_last_pt(tmp_path: Path, caplog) -> None:
    """delving-eval on a live run writes into its folder; the report listed that file as the finished run's
    result, although its checkpoint.sha256 is not the final last.pt's."""
    run_dir, final, stale = _finished_run_with_predictions(tmp_path)
    run = load_run(run_dir)
    assert [e.source for e in run.evals] == [str(final)]
    assert f"{stale} left out of the report: made from another state of {run_dir / 'last.pt'}" in caplog.text
    with pytest.raises(ReportInputError, match=rf"predictions={stale}: made from another state of"):
        run_report([str(run_dir)], [str(stale)], [], [], str(tmp_path / "out"), "t", "c")


def test_the_ensemble_flags_a_member_of_another_state_of_a_finished_runs_last_pt(
    tmp_path: Path, capsys
) -> None:
    from helpers.configs import compose_config

    from delving.evaluation.app import run_ensemble

    _, final, stale = _finished_run_with_predictions(tmp_path)
    out = tmp_path / "ens"
    run_ensemble(
        compose_config([f"files=[{final},{stale}]", "names=[final,mid]", f"output_dir={out}"], "ensemble")
    )
    assert "warning: mid was made from another state of" in capsys.readouterr().err
    markdown = (out / "ensemble.md").read_text()
    assert "**Not the runs' final checkpoints:**" in markdown and "- mid: made from another state" in markdown
    models = {m["name"]: m for m in json.loads((out / "ensemble.json").read_text())["models"]}
    assert models["final"]["checkpoint_note"] is None and models["mid"]["checkpoint_note"]
