"""The report's section on delving-ensemble's results (its ensemble.json files)."""

from __future__ import annotations

from typing import Any

from delving.report.section import Section, fmt_num


def _ensembles_table(ensembles: list[dict[str, Any]]) -> list[str]:
    """One row per ensemble.json: members, weights, data and errors (and the selected ensemble's)."""
    lines = [
        "| ensemble | members | weights | data | images scored | top-1 (%) | top-5 (%) | selected: members, top-1 / top-5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, entry in enumerate(ensembles, 1):
        ens, data, selection = entry.get("ensemble", {}), entry.get("data", {}), entry.get("selection")
        chosen = "–"
        if selection:
            chosen = f"{', '.join(selection['chosen'])}: {fmt_num(selection['top1'])} / {fmt_num(selection['top5'])}"
        lines.append(
            f"| {entry.get('source', f'ensemble {number}')} | {', '.join(ens.get('members', []))} | "
            f"{ens.get('weights') or 'equal'} | {data.get('name')} / {data.get('split')} | "
            f"{data.get('scored_images')} | {fmt_num(ens.get('top1'))} | {fmt_num(ens.get('top5'))} | {chosen} |"
        )
    return lines


def ensembles_section(ensembles: list[dict[str, Any]]) -> Section:
    """A table of the ensembles (nothing without one); report.json gets their files' contents."""
    lines = ["## Ensembles (delving-ensemble)", "", *_ensembles_table(ensembles), ""] if ensembles else []
    return Section(lines, summary={"ensembles": ensembles})
