"""Reports: paper-vs-ours tables and plots from run directories (delving-report), and the Sec. 2.2
initialization check (delving-init-check)."""

from delving.report.init_check import InitReport, init_check
from delving.report.report import Report, build_report, write_report
from delving.report.runs import Run, find_runs, load_run

__all__ = [
    "InitReport",
    "Report",
    "Run",
    "build_report",
    "find_runs",
    "init_check",
    "load_run",
    "write_report",
]
