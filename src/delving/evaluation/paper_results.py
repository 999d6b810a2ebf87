"""Looking up the paper's reported errors (delving.paper: Tables 2, 4, 5, 6, 7, Figures 2 and 3) for tables of
"paper vs ours" and for the experiments' `paper_reference`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from delving.paper import PAPER_FIGURES, PAPER_TABLES, PaperRow, PaperTable


def paper_table(key: str) -> PaperTable:
    if key not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {key!r}; choose one of {', '.join(PAPER_TABLES)}")
    return PAPER_TABLES[key]


def find_paper_row(
    key: str, model: str | None, act: str | None, protocol: str | None, scales: list[int] | None = None
) -> PaperRow | None:
    """The row of table `key` that a run of (model, act, protocol, scales) reproduces, if any."""
    single_scale = scales[0] if scales and len(scales) == 1 else None
    for row in paper_table(key).rows:
        if row.model is None or (row.model, row.act) != (model, act):
            continue
        if row.protocol != protocol:
            continue
        if row.scale is not None and row.scale != single_scale:
            continue
        return row
    return None


def resolve_reference(reference: Mapping[str, Any]) -> PaperRow | dict[str, str]:
    """An experiment's `paper_reference` ({table, row} or {figure}) as the paper's numbers: the row of
    PAPER_TABLES, or the figure's description. The configs hold only these keys, never a copy of a number."""
    if "figure" in reference:
        if reference["figure"] not in PAPER_FIGURES:
            raise ValueError(
                f"unknown paper figure {reference['figure']!r}; choose one of {', '.join(PAPER_FIGURES)}"
            )
        return PAPER_FIGURES[reference["figure"]]
    rows = {row.label: row for row in paper_table(reference["table"]).rows}
    if reference.get("row") not in rows:
        raise ValueError(
            f"{reference['table']} has no row {reference.get('row')!r}; its rows: {', '.join(rows)}"
        )
    return rows[reference["row"]]
