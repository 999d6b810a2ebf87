"""The mini experiments train end to end on tiny data, and delving-report builds its tables and plots from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli_env

from delving.report.app import run_report
from delving.report.report import build_report, write_report
from delving.report.runs import load_run

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
        result = subprocess.run(
            [*command, f"hydra.run.dir={run_dir}"], capture_output=True, text=True, env=cli_env(), cwd=REPO
        )
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
    assert init[0] == ("fig3: net30, ReLU, He vs Xavier init", "epoch", "val top-1 error (%)")
    assert init[1][1:] == ("epoch", "||dE/dW|| of the first and last conv")
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
