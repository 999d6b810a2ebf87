"""Figure helpers: matplotlib's object API with the Agg canvas (no pyplot state, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 90  # small committed PNGs


def new_figure(
    rows: int = 1, cols: int = 1, width: float = 6.0, height: float = 4.0
) -> tuple[Figure, list[Axes]]:
    """A figure laid out by matplotlib's constrained layout: titles, labels and figure legends all fit in it."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, list(np.ravel(axes))


def colours(count: int) -> list[tuple[float, float, float, float]]:
    """`count` distinct colours (matplotlib's default cycle has 10, so an 11th line would repeat the first)."""
    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](x) for x in np.linspace(0.05, 0.95, count)]


def legend_below(fig: Figure, axes: Sequence[Axes], fontsize: float = 8) -> None:
    """One legend for the whole figure, below its axes and inside the image (each label once, in order);
    the figure grows by the legend's rows so that the axes keep their size."""
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if not entries:
        return
    longest = max(map(len, entries))
    columns = max(1, min(len(entries), int(fig.get_figwidth() * 11 / max(longest, 8))))
    rows = -(-len(entries) // columns)
    fig.set_figheight(fig.get_figheight() + rows * fontsize / 50 + 0.2)
    fig.legend(
        list(entries.values()), list(entries), loc="outside lower center", ncols=columns, fontsize=fontsize
    )


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
