"""The report, composed of its sections: the paper's findings decided, the runs and their tests, the paper's
tables beside ours, ensembles, the init study, learned slopes, training curves and the init check.

`build_report` returns the markdown and the matplotlib figures (tests inspect them); `write_report` saves them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from delving.io import utf8, write_folder_atomically
from delving.report.curves import curves_section
from delving.report.ensembles import ensembles_section
from delving.report.evidence import Evidence
from delving.report.findings import findings_section
from delving.report.init_study import init_check_section, init_study_section
from delving.report.plots import save_figure
from delving.report.runs import Run, label_runs
from delving.report.section import Section
from delving.report.slopes import slopes_section
from delving.report.tables import paper_tables_section, runs_section


@dataclass
class Report:
    markdown: str
    figures: dict[str, Figure] = field(default_factory=dict)  # PNG file name -> figure
    summary: dict[str, Any] = field(default_factory=dict)  # what report.json holds


def _by_study(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.study].append(run)
    return dict(sorted(groups.items()))


def _header(title: str, command: str | None) -> Section:
    lines = [f"# {title}", ""]
    if command:
        lines += ["Made with:", "", "```", command, "```", ""]
    return Section(lines)


def build_report(
    runs: list[Run],
    ensembles: list[dict[str, Any]] | None = None,
    init_checks: dict[str, list[dict[str, Any]]] | None = None,
    title: str = "Reproduction report",
    command: str | None = None,
) -> Report:
    """Everything from already loaded runs, ensemble.json contents and init_check.json contents (by path).

    Runs that share an experiment name are labelled by the overrides that tell them apart (label_runs).
    """
    ensembles = ensembles or []
    init_checks = init_checks or {}
    label_runs(runs)
    evidence = Evidence(runs)
    groups = _by_study(runs)
    findings = findings_section(runs, evidence)
    runs_part = runs_section(runs, evidence)
    paper_part = paper_tables_section(runs, ensembles, evidence)
    ensembles_part = ensembles_section(ensembles)
    init_part = init_study_section(groups)
    slopes_part = slopes_section(groups)
    curves_part = curves_section(groups)
    checks_part = init_check_section(init_checks)
    report = Report("")
    lines: list[str] = []
    for section in (
        _header(title, command),
        findings,
        runs_part,
        paper_part,
        ensembles_part,
        init_part,
        slopes_part,
        curves_part,
        checks_part,
    ):
        lines += section.lines
        report.figures.update(section.figures)
    report.markdown = "\n".join(lines)
    # report.json's keys in their order: runs, ensembles, init_checks, findings.
    for section in (runs_part, ensembles_part, checks_part, findings):
        report.summary.update(section.summary)
    return report


_REPORT_FILES = ("report.md", "report.json")


def write_report(report: Report, output_dir: str | Path) -> Path:
    """report.md, report.json and the PNGs in `output_dir`, all or nothing: written into a temp folder beside
    it, which then replaces the previous report (a full disk leaves that one whole). Returns report.md."""

    def write(folder: Path) -> None:
        for name, fig in report.figures.items():
            save_figure(fig, folder / name)
        (folder / "report.json").write_bytes(utf8(json.dumps(report.summary, indent=1, default=str) + "\n"))
        (folder / "report.md").write_bytes(utf8(report.markdown + "\n"))

    folder = write_folder_atomically(output_dir, write, _is_report_file)
    return folder / "report.md"


def _is_report_file(path: Path) -> bool:
    """A file a previous delving-report wrote (so the whole folder may be replaced)."""
    return path.is_file() and not path.is_symlink() and (path.name in _REPORT_FILES or path.suffix == ".png")
