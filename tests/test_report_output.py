"""delving-report's and delving-ensemble's output folders: written whole or not at all, refused early."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from delving.io import OutputSpaceError
from delving.report.plots import new_figure
from delving.report.report import Report, write_report


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
