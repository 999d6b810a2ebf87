"""delving-report's and delving-ensemble's output folders: written whole or not at all, refused early."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.evaluation import make_predictions
from helpers.runs import REPO, TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env, run_train
from omegaconf import OmegaConf

from delving.evaluation.app import run_ensemble
from delving.evaluation.config import EnsembleAppConfig
from delving.evaluation.predictions import save_predictions
from delving.io import OutputSpaceError
from delving.report.app import run_report
from delving.report.curves import curves_figure
from delving.report.plots import new_figure
from delving.report.report import Report, write_report
from delving.report.runs import Run, label_runs


def _report(text: str, figures: int) -> Report:
    report = Report(markdown=f"# {text}", summary={"title": text})
    for k in range(figures):
        fig, (ax,) = new_figure()
        ax.plot(range(50), [((i * (k + 3)) % 17) for i in range(50)])
        ax.set_title(f"{text} {k}")
        report.figures[f"plot_{k}.png"] = fig
    return report


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB tmpfs, so a full disk is a real ENOSPC (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=False).returncode:
        pytest.skip("mount -t tmpfs is not allowed here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path, leave: int) -> None:
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_a_full_disk_leaves_the_previous_report_whole(small_disk: Path) -> None:
    out = small_disk / "report"
    write_report(_report("first", 2), out)
    before = _contents(out)
    _fill(small_disk, leave=16 * 1024)
    with pytest.raises(OutputSpaceError, match=rf"no space left on the disk of {out} .*nothing was changed"):
        write_report(_report("second", 4), out)
    assert _contents(out) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "report"]  # no temp folder left


def test_a_failure_while_writing_leaves_the_previous_report_whole(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "report"
    write_report(_report("first", 2), out)
    before = _contents(out)
    broken = _report("second", 3)  # its report.json fails after its PNGs are written
    monkeypatch.setattr(
        "delving.report.report.json.dumps", lambda *a, **k: (_ for _ in ()).throw(OSError(5, "EIO"))
    )
    with pytest.raises(OSError, match="EIO"):
        write_report(broken, out)
    assert _contents(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_new_report_replaces_the_old_one_whole_and_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(_report("first", 3), out)
    path = write_report(_report("second", 1), out)
    assert path == out / "report.md" and path.read_text() == "# second\n"
    assert sorted(_contents(out)) == ["plot_0.png", "report.json", "report.md"]  # no stale plot_1, plot_2
    (out / "notes.txt").write_text("mine")
    write_report(_report("third", 2), out)
    assert sorted(_contents(out)) == ["notes.txt", "plot_0.png", "plot_1.png", "report.json", "report.md"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "report.md").read_text() == "# third\n"


def _ensemble_inputs(folder: Path, images: int = 1500) -> list[Path]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, images)
    return [
        save_predictions(
            folder / f"m{k}.npz",
            make_predictions(rng.dirichlet(np.ones(10), images).astype(np.float32), labels),
        )
        for k in range(2)
    ]


def _ensemble(files: list[Path], out: Path, save: bool = True) -> None:
    cfg = OmegaConf.merge(
        OmegaConf.structured(EnsembleAppConfig),
        {"files": [str(f) for f in files], "output_dir": str(out), "save_predictions": save},
    )
    run_ensemble(cfg)


def _used(disk: Path) -> int:
    stat = os.statvfs(disk)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def test_ensemble_on_a_full_disk_writes_all_or_nothing(small_disk: Path, tmp_path: Path, capsys) -> None:
    files = _ensemble_inputs(tmp_path)
    probe = small_disk / "probe"
    _ensemble(files, probe)
    npz = _used(small_disk)
    (probe / "ensemble.npz").unlink()
    npz -= _used(small_disk)  # what ensemble.npz takes on this disk, whole pages
    shutil.rmtree(probe)
    out = small_disk / "ensemble"
    _fill(small_disk, leave=npz + 2048)  # room for ensemble.npz, not for it and ensemble.md
    with pytest.raises(
        OutputSpaceError, match=r"no space left on the disk of .*ensemble.*none of ensemble\.md"
    ):
        _ensemble(files, out)
    assert not out.exists() or not list(out.iterdir())  # not an ensemble.npz without its .md/.json
    (small_disk / "filler").unlink()
    _ensemble(files, out, save=False)
    before = _contents(out)
    _fill(small_disk, leave=npz + 2048)
    with pytest.raises(OutputSpaceError):
        _ensemble(files[::-1], out)
    assert _contents(out) == before


def test_ensemble_says_every_file_it_wrote(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ens"
    _ensemble(_ensemble_inputs(tmp_path, images=20), out)
    written = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("written: "))
    assert written == f"written: {out / 'ensemble.md'}, {out / 'ensemble.json'}, {out / 'ensemble.npz'}"
    assert sorted(_contents(out)) == ["ensemble.json", "ensemble.md", "ensemble.npz"]


@pytest.mark.slow
def test_report_marks_unfinished_runs_and_lists_runs_without_a_checkpoint(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    planned = ["train.epochs=20", "train.checkpoint_every_steps=0"]
    for name, kill_at in (("killed_in_epoch_2", 13), ("killed_at_once", 1)):  # 6 steps an epoch
        killed = run_train(runs / name, planned, check=False, env=cli_env(DELVING_KILL_AT_STEP=str(kill_at)))
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (runs / "killed_in_epoch_2" / "last.pt").is_file() and not (
        runs / "killed_at_once" / "last.pt"
    ).exists()
    markdown = run_report([str(runs)], [], [], [], str(tmp_path / "report"), "t", "cmd").read_text()
    rows = {
        line.split(" | ")[1]: line for line in markdown.splitlines() if line.startswith("| ") and "`" in line
    }
    assert "| 2 of 20 (unfinished: no finished.json) |" in rows["`killed_in_epoch_2`"]
    assert "| 0 of 20 (no checkpoint: stopped before its first save) |" in rows["`killed_at_once`"]
    assert "Relaunching its command continues it." in markdown


def _without_root_rights(*command: str) -> subprocess.CompletedProcess:
    """`command` as root without the capabilities that bypass file permissions: a user without rights."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the permission-bypassing capabilities")
    drop = "-dac_override,-dac_read_search"
    env = cli_env()
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.slow
def test_a_read_only_output_dir_is_refused_before_the_work(tmp_path: Path) -> None:
    files = _ensemble_inputs(tmp_path, images=20)
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("experiment_name: demo\nmodel: {name: model_a}\n")
    (run_dir / "metrics.jsonl").write_text('{"type": "val", "epoch": 0, "step": 2, "val_top1_error": 50.0}\n')
    locked = tmp_path / "locked"
    (locked / "report").mkdir(parents=True)
    locked.chmod(0o555)
    for module, args, out in (
        ("ensemble", [f"files=[{files[0]},{files[1]}]"], locked / "ensemble"),
        ("report", [f"runs=[{run_dir}]"], locked / "report"),  # exists, but its temp folder goes beside it
    ):
        result = _without_root_rights("-m", f"delving.cli.{module}", *args, f"output_dir={out}")
        assert result.returncode == 2, result.stdout + result.stderr
        assert (
            result.stderr.strip()
            == f"error: output_dir={out}: no permission to write in {locked}; choose another output_dir="
        )
        assert result.stdout == ""  # refused before reading anything
    assert sorted(p.name for p in locked.iterdir()) == ["report"]


def _curve_run(tmp_path: Path, seed: int, act: str, steps_per_epoch: int = 10, epochs: int = 4) -> Run:
    records = []
    for step in range(1, epochs * steps_per_epoch + 1):
        records.append({"type": "train", "step": step, "loss": 2.0 - step / 40 + seed / 100})
        if step % steps_per_epoch == 0:
            epoch = step // steps_per_epoch - 1
            records.append(
                {"type": "val", "epoch": epoch, "step": step, "val_top1_error": 80 - 5 * epoch + seed}
            )
    config = {"experiment_name": "table2_net14_prelu_mini", "seed": seed, "model": {"act": act}}
    return Run(
        tmp_path / f"{act}{seed}", config, records=records, overrides=[f"seed={seed}", f"model.act={act}"]
    )


def _cut_texts(fig) -> list[str]:
    """The titles and axis labels that the saved PNG cuts off (any part outside the figure)."""
    fig.canvas.draw()
    renderer, box = fig.canvas.get_renderer(), fig.bbox
    cut = []
    for ax in fig.axes:
        for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
            extent = text.get_window_extent(renderer)
            outside = extent.x0 < box.x0 or extent.y0 < box.y0 or extent.x1 > box.x1 or extent.y1 > box.y1
            if text.get_text() and outside:
                cut.append(text.get_text())
    return cut


@pytest.mark.parametrize("seeds", [1, 3])
def test_curve_plots_count_epochs_from_0_show_their_labels_and_promise_no_band_for_one_seed(
    tmp_path: Path, seeds: int
) -> None:
    runs = [_curve_run(tmp_path, seed, act) for act in ("prelu", "relu") for seed in range(seeds)]
    label_runs(runs)
    fig = curves_figure("table2", runs)
    assert _cut_texts(fig) == []
    ax_loss, ax_val = fig.axes
    assert ax_val.get_xlabel() == ax_loss.get_xlabel() == "epoch (from 0, as the logs count)"
    first_val = ax_val.get_lines()[0].get_xdata()
    assert list(first_val) == [0, 1, 2, 3]  # the logs' "epoch 0" .. "epoch 3"
    assert min(ax_loss.get_lines()[0].get_xdata()) == 0.0 and max(ax_loss.get_lines()[0].get_xdata()) < 4
    if seeds == 1:
        assert "one seed: no interval to draw" in ax_val.get_title() and "95 %" not in ax_val.get_title()
    else:
        assert "bars: 95 % interval over seeds" in ax_val.get_title()


@pytest.mark.slow
def test_sweep_log_opens_without_plugin_set_up_and_writes_its_results_file(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    outputs = tmp_path / "outputs"
    result = subprocess.run(
        [sys.executable, "-m", "delving.train", "hparams_search=lr_wd", *TINY_DATA, *TINY_MODEL, *TINY_TRAIN,
         "train.epochs=1", "hydra.sweeper.n_trials=1", f"paths.outputs={outputs}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=cli_env(DELVING_CONFIG_DIR=str(REPO / "configs")),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "setup plugin" not in result.stdout + result.stderr
    assert "best_value:" in (outputs / "default" / "optimization_results.yaml").read_text()


def test_a_report_into_the_current_folder_or_through_a_symlink_keeps_that_folder(
    tmp_path: Path, monkeypatch
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    write_report(_report("first", 1), ".")
    write_report(_report("second", 1), ".")
    assert Path.cwd() == here and (here / "report.md").read_text() == "# second\n"
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    write_report(_report("third", 1), tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (target / "report.md").read_text() == "# third\n"
