"""The paper's findings (delving.paper.FINDINGS) decided by their 95 % intervals, and the report's section on them.

A finding compares two measures (`a - b`) the way the paper states it. Every number is the mean over the
replicate runs (those that differ only in `seed`) with an interval from `delving.report.stats`.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from delving.paper import EQUAL_MARGIN, FINDINGS, Expect, Finding
from delving.report.evidence import Evidence, FindingInputError, MissingRuns
from delving.report.plots import new_figure
from delving.report.runs import Run
from delving.report.section import Section
from delving.report.stats import (
    Estimate,
    Verdict,
    error_difference,
    error_estimate,
    seed_difference,
    seed_estimate,
    verdict,
)


@dataclass
class FindingResult:
    finding: Finding
    a: Estimate | None = None
    b: Estimate | None = None
    difference: Estimate | None = None
    verdict: Verdict | None = None  # None: not run (the runs are missing)
    missing: str = ""
    seeds: list[int] = field(default_factory=list)
    b_note: str = ""  # which member was the best, for a "best" measure


_IMAGE_KINDS = ("error", "ensemble", "best")
_CONSTANT_KINDS = ("chance", "constant")


def _shifted(estimate: Estimate, by: float) -> Estimate:
    return Estimate(
        estimate.mean + by,
        estimate.low + by,
        estimate.high + by,
        estimate.seeds,
        estimate.images,
        estimate.seed_std,
    )


def _constant(value: float) -> Estimate:
    return Estimate(value, value, value, 0, None, 0.0)


def _decide(finding: Finding, evidence: Evidence) -> FindingResult:
    """The finding's two measures, their difference with its interval, and the verdict; a finding whose
    runs are missing comes back with `missing` set and no verdict."""
    result = FindingResult(finding)
    a, b = finding.a, finding.b
    try:
        if a.kind in _IMAGE_KINDS:
            errors_a = evidence.per_image(a)
            result.a, result.seeds = error_estimate(errors_a.wrong), errors_a.seeds
            if b.kind in _IMAGE_KINDS:
                errors_b = evidence.per_image(b)
                if not np.array_equal(errors_a.ids, errors_b.ids):
                    raise FindingInputError(
                        f"{finding.source}, {finding.claim}: its two sides are scored on different validation "
                        f"images ({len(errors_a.ids)} and {len(errors_b.ids)}); test both on one val split"
                    )
                result.b = error_estimate(errors_b.wrong)
                same_runs = errors_a.seeds == errors_b.seeds and bool(errors_a.runs & errors_b.runs)
                result.difference = error_difference(errors_a.wrong, errors_b.wrong, same_runs=same_runs)
                if b.kind == "best":
                    result.b_note = f" ({evidence.best_member(b).experiment})"
            else:
                value = evidence.chance(b) if b.kind == "chance" else 0.0
                result.b = _constant(value)
                result.difference = _shifted(result.a, -value)
        else:
            seeds_a, values_a = evidence.per_seed(a)
            result.a, result.seeds = seed_estimate(values_a), seeds_a
            if b.kind in _CONSTANT_KINDS:
                result.b = _constant(0.0)
                result.difference = result.a
            else:
                _, values_b = evidence.per_seed(b)
                result.b = seed_estimate(values_b)
                result.difference = seed_difference(values_a, values_b)
    except MissingRuns as why:
        result.missing = str(why)
        return result
    result.verdict = verdict(result.difference, finding.expect, finding.margin)
    return result


def decide_all(
    runs: list[Run], findings: tuple[Finding, ...] = FINDINGS, evidence: Evidence | None = None
) -> list[FindingResult]:
    evidence = evidence or Evidence(runs)
    return [_decide(finding, evidence) for finding in findings]


# ------------------------------------------------------------------ the report's section

_VERDICT_COLOURS = {
    Verdict.HOLDS: "tab:green",
    Verdict.CONTRADICTED: "tab:red",
    Verdict.INCONCLUSIVE: "tab:orange",
}


def _expected(result: FindingResult) -> str:
    expect, margin = result.finding.expect, result.finding.margin
    if expect is Expect.EQUAL:
        return f"within ±{margin:g}"
    if expect is Expect.LESS:
        return f"< -{margin:g}" if margin else "< 0"
    return f"> {margin:g}"


def _findings_table(results: list[FindingResult]) -> list[str]:
    lines = [
        "| source | the paper says | paper (a vs b) | ours: a | ours: b | a − b [95 % interval] | expected | seeds | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        finding = result.finding
        if result.verdict is None:
            lines.append(
                f"| {finding.source} | {finding.claim} | {finding.paper} | not run: {result.missing} | | | | | |"
            )
            continue
        digits = 3 if finding.a.kind.startswith("slope") else 2
        seeds = ",".join(map(str, result.seeds))
        lines.append(
            f"| {finding.source} | {finding.claim} | {finding.paper} | {result.a.text(digits)} | "
            f"{result.b.text(digits)}{result.b_note} | {result.difference.text(digits)} | {_expected(result)} | {seeds} | "
            f"**{result.verdict.value}** |"
        )
    return lines


def findings_figure(results: list[FindingResult]) -> Figure | None:
    """Each decided error finding: a - b with its 95 % interval, coloured by verdict, against 0 (and ±margin);
    the title counts what it leaves out (the learned-slope findings, decided in the table, in other units)."""
    decided = [r for r in results if r.verdict is not None]
    shown = [r for r in decided if not r.finding.a.kind.startswith("slope")]
    if not shown:
        return None
    labels = [textwrap.fill(f"{r.finding.source}: {r.finding.claim}", 60) for r in reversed(shown)]
    rows = sum(label.count("\n") + 1 for label in labels)
    fig, (ax,) = new_figure(1, 1, width=11, height=1.2 + 0.16 * rows + 0.12 * len(shown))
    for row, result in enumerate(reversed(shown)):
        diff = result.difference
        ax.errorbar(
            [diff.mean],
            [row],
            xerr=[[diff.mean - diff.low], [diff.high - diff.mean]],
            fmt="o",
            capsize=3,
            color=_VERDICT_COLOURS[result.verdict],
        )
    ax.axvline(0.0, color="black", linewidth=0.8)
    for margin in (-EQUAL_MARGIN, EQUAL_MARGIN):
        ax.axvline(margin, color="grey", linewidth=0.6, linestyle=":")
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.set_xlabel("a − b, error points (top-1; Table 7: top-5), with its 95 % interval")
    left_out = len(decided) - len(shown)
    note = f"; the {left_out} learned-slope findings are in the table" if left_out else ""
    ax.set_title(
        f"{len(shown)} of the paper's {len(decided)} decided findings{note}\n"
        "green holds, red contradicted, orange inconclusive",
        fontsize=9,
    )
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def _finding_summary(result: FindingResult) -> dict[str, Any]:
    finding = result.finding
    return {
        "source": finding.source,
        "claim": finding.claim,
        "paper": finding.paper,
        "expect": finding.expect.value,
        "margin": finding.margin,
        "a": None if result.a is None else vars(result.a),
        "b": None if result.b is None else vars(result.b),
        "difference": None if result.difference is None else vars(result.difference),
        "seeds": result.seeds,
        "verdict": None if result.verdict is None else result.verdict.value,
        "missing": result.missing,
    }


def findings_section(runs: list[Run], evidence: Evidence) -> Section:
    """The findings' table and plot (none where no finding could be decided); report.json gets them all."""
    results = decide_all(runs, evidence=evidence)
    section = Section(summary={"findings": [_finding_summary(result) for result in results]})
    if all(result.verdict is None for result in results):
        return section
    section.lines = [
        "## The paper's findings, decided by interval",
        "",
        "Each finding compares two measures as the paper does (a − b; an error below is better). Numbers "
        "are means over the seeds with their 95 % interval, which counts both noises: the spread between "
        "seeds and the finite validation set (per-image errors; Student's t, Welch-Satterthwaite degrees of "
        "freedom; see `delving/report/stats.py`). **holds**: the whole interval of a − b says what the paper "
        "says; **contradicted**: the whole interval says the opposite; **inconclusive**: it straddles. "
        f'"≈" findings hold inside ±{EQUAL_MARGIN:g} points. Slopes are decided over seeds alone.',
        "",
        *_findings_table(results),
        "",
    ]
    figure = findings_figure(results)
    if figure is not None:
        section.figures["findings.png"] = figure
        section.lines += ["![findings](findings.png)", ""]
    return section
