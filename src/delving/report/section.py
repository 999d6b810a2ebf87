"""What each of the report's sections returns, and the formats they share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from matplotlib.figure import Figure

from delving.report.runs import Run


@dataclass
class Section:
    """A part of the report: its markdown lines, its figures and what it adds to report.json."""

    lines: list[str] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)  # PNG file name -> figure
    summary: dict[str, Any] = field(default_factory=dict)


def fmt_num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def act_name(run: Run) -> str:
    return str(run.model.get("act"))
