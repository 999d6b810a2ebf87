"""delving-report over a folder of mixed runs (what the README's recipes leave in outputs/demo/): short labels,
distinct legend entries, a colour per line, legends inside the figures, one slope history per run."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import pytest
from helpers import warm
from helpers.data import make_folder_dataset
from helpers.runs import REPO, TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env, run_train
from matplotlib.colors import to_hex
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from delving.report.app import run_report
from delving.report.report import build_report
from delving.report.runs import find_runs, load_run

MAX_LABEL = 100  # characters: a table cell, a legend line (the whole config is in report.json)


def _train_on_folder(run_dir: Path, root: Path) -> None:
    """The tiny run on an image folder (TINY_DATA without its data=synthetic group)."""
    data = [o for o in TINY_DATA if o != "data=synthetic"]
    command = [sys.executable, "-m", "delving.train", "data=folder", f"data.root={root}", *data, *TINY_MODEL,
               *TINY_TRAIN, "model.num_classes=3", f"hydra.run.dir={run_dir}"]  # fmt: skip
    result = warm.run(command, env=cli_env(), cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def mixed_runs(single_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A first run, the same under DDP (2 processes, gloo), a fine-tune of the first, the first extended by an epoch, and a run
    on an image folder: one experiment name ("default"), five folders."""
    root = tmp_path_factory.mktemp("mixed")
    ddp, finetune, extended, folder = root / "ddp2", root / "finetune", root / "extended", root / "folder"
    run_train(ddp, ["train.checkpoint_every_steps=2"], nproc=2)
    run_train(finetune, [f"init_from={single_run / 'last.pt'}", "data.synthetic_classes=3", "model.num_classes=3",
                         "train.epochs=1"])  # fmt: skip
    shutil.copytree(single_run, extended)
    run_train(extended, ["train.checkpoint_every_steps=2", "train.epochs=3"])
    _train_on_folder(
        folder, make_folder_dataset(root / "photos", classes=3, train_per_class=8, val_per_class=4)
    )
    return [single_run, ddp, finetune, extended, folder]


def _legend_labels(fig: Figure) -> list[list[str]]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    return [[text.get_text() for text in legend.get_texts()] for legend in legends]


def _colour(handle) -> str:
    line = handle.lines[0] if isinstance(handle, ErrorbarContainer) else handle
    return to_hex(line.get_color())


def _outside(fig: Figure) -> list[str]:
    """Legends, titles and axis labels that reach outside the saved image."""
    fig.canvas.draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    artists = [*fig.legends, *(a for ax in fig.axes for a in (ax.title, ax.xaxis.label, ax.yaxis.label))]
    cut = []
    for artist in artists:
        extent = artist.get_window_extent(renderer)
        if (
            extent.x0 < box.x0 - 1
            or extent.y0 < box.y0 - 1
            or extent.x1 > box.x1 + 1
            or extent.y1 > box.y1 + 1
        ):
            cut.append(str(artist))
    return cut


@pytest.mark.slow
@pytest.mark.ddp
def test_a_report_over_mixed_runs_is_readable(mixed_runs: list[Path], tmp_path: Path) -> None:
    runs = [load_run(path) for path in mixed_runs]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Tight layout not applied" once warned of a legend off the image
        report = build_report(runs)
        for fig in report.figures.values():
            fig.canvas.draw()
    titles = [run.title for run in runs]
    assert titles == [
        f"default [{mixed_runs[0].name}]",
        "default [ddp2]",
        "default [finetune: data.synthetic_classes=3 model.num_classes=3 train.epochs=1 +1 more]",
        "default [extended: train.epochs=3]",
        f"default [folder: data=folder model.num_classes=3 data.root=…/{mixed_runs[4].parent.name}/photos]",
    ]
    assert max(map(len, titles)) <= MAX_LABEL and len(set(titles)) == len(titles)

    assert sorted(report.figures) == ["default_curves.png", "default_slope_history.png", "default_slopes.png"]
    for name, fig in report.figures.items():
        assert _outside(fig) == [], name
        for labels in _legend_labels(fig):
            assert len(set(labels)) == len(labels), (name, labels)
        for legend in fig.legends:  # a colour per line (the default cycle repeats after 10)
            ours = [_colour(h) for h, t in zip(legend.legend_handles, legend.get_texts(), strict=True)
                    if not t.get_text().startswith(("paper", "init"))]  # fmt: skip
            assert len(set(ours)) == len(ours), name

    curves = report.figures["default_curves.png"]
    (legend,) = curves.legends  # one legend for both panels, below them
    assert [t.get_text() for t in legend.get_texts()] == titles

    slopes = report.figures["default_slopes.png"]
    (legend,) = slopes.legends
    ours = [t.get_text() for t in legend.get_texts() if not t.get_text().startswith(("paper", "init"))]
    assert len(ours) == 5 and len(set(ours)) == 5
    layers = [t.get_text() for t in slopes.axes[0].get_xticklabels()]

    history = report.figures["default_slope_history.png"]
    panels = [ax for ax in history.axes if ax.get_visible()]
    assert [ax.get_title().replace("\n", " ") for ax in panels] == titles  # one per run, titled by its label
    (legend,) = history.legends
    assert [t.get_text() for t in legend.get_texts()] == layers  # the same layer names as the slopes plot
    assert len(layers) == 13  # net14: more lines than the default colour cycle has colours

    # The report as written: short cells, the whole overrides in report.json.
    out = run_report([str(p) for p in mixed_runs], [], [], [], str(tmp_path / "report"), "t", "c")
    cells = [
        line.split(" | ")[0].lstrip("| ")
        for line in out.read_text().splitlines()
        if line.startswith("| default")
    ]
    assert cells and max(map(len, cells)) <= MAX_LABEL
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    finetune = next(r for r in summary["runs"] if r["path"].endswith("finetune"))
    assert f"init_from={mixed_runs[0] / 'last.pt'}" in finetune["overrides"]


@pytest.mark.slow
@pytest.mark.ddp
def test_find_runs_finds_each_of_the_mixed_runs(mixed_runs: list[Path]) -> None:
    assert find_runs([str(mixed_runs[1].parent)]) == sorted(mixed_runs[1:])
