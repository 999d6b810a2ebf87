"""Reports: paper-vs-ours tables and plots from run directories (delving-report), and the Sec. 2.2
initialization check (delving-init-check).

The names below are imported on first use (PEP 562), so `import delving.report.config` (the entry
points' schemas) does not pull in the models, timm and matplotlib.
"""

from __future__ import annotations

from delving._lazy import lazy_exports

_EXPORTS = {
    "InitReport": "delving.report.init_check",
    "init_check": "delving.report.init_check",
    "Report": "delving.report.report",
    "build_report": "delving.report.report",
    "write_report": "delving.report.report",
    "Run": "delving.report.runs",
    "find_runs": "delving.report.runs",
    "load_run": "delving.report.runs",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
