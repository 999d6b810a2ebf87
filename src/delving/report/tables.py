"""The report's tables of runs: each run, every test over its seeds, and the paper's tables beside ours."""

from __future__ import annotations

from typing import Any

from delving.evaluation.paper_results import find_paper_row
from delving.paper import PAPER_TABLES, Measure, PaperRow
from delving.report.evidence import Evidence, group_labels, replicate_groups, seed_of
from delving.report.runs import EvalRecord, Run
from delving.report.section import Section, act_name, fmt_num
from delving.report.stats import Estimate, error_estimate


def _describe_test(record: EvalRecord) -> str:
    scales = "/".join(str(s) for s in record.scales or [])
    return f"{record.protocol} {scales}, {record.num_images} images"


def _data_line(run: Run) -> str:
    data, model = run.config.get("data", {}), run.model
    name = data.get("name")
    if name == "synthetic":
        where = f"synthetic, {data.get('synthetic_classes')} classes"
    else:
        where = f"{name} {data.get('root') or ''}".strip()
    return (
        f"{where}; {model.get('name')} width {model.get('width')}, {model.get('input_size')} px crops, "
        f"{_epochs_text(run)} epochs"
    )


def _epochs_text(run: Run) -> str:
    """The planned epochs; for a run without finished.json, the epochs its last.pt holds of them, and why."""
    planned = run.config.get("train", {}).get("epochs")
    if run.finished:
        return f"{planned}"
    if not run.has_checkpoint:
        return f"0 of {planned} (no checkpoint: stopped before its first save)"
    return f"{run.epochs_done} of {planned} (unfinished: no finished.json)"


_UNFINISHED_NOTE = (
    "A run marked unfinished has no finished.json: it was stopped, killed or is still running, and its numbers "
    "are those of the epochs shown. Relaunching its command continues it."
)


def _run_table(runs: list[Run]) -> list[str]:
    lines = [
        "| run | folder | seed | model | act | init | data | epochs | last val top-1 / top-5 (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        val = run.final_val or {}
        data = run.config.get("data", {})
        lines.append(
            f"| {run.title} | `{run.path.name}` | {seed_of(run)} | "
            f"{run.model.get('name')} (width {run.model.get('width')}) | "
            f"{act_name(run)} | {run.model.get('init')} | {data.get('name')} | "
            f"{_epochs_text(run)} | "
            f"{fmt_num(val.get('val_top1_error'))} / {fmt_num(val.get('val_top5_error'))} |"
        )
    if not all(run.finished for run in runs):
        lines += ["", _UNFINISHED_NOTE]
    return lines


def _replicate_errors(evidence: Evidence, run: Run, record: EvalRecord) -> tuple[Estimate, Estimate, int]:
    """Top-1 and top-5 error of `record`'s test over the run's replicates (its other seeds), with intervals."""
    test = Measure("error", run.name, record.protocol, tuple(record.scales or ()))
    replicates = [r for r in evidence.replicates_of(run) if _has_test(r, record)]
    top1 = evidence.errors(replicates, test, k=1).wrong
    top5 = evidence.errors(replicates, test, k=5).wrong
    return error_estimate(top1), error_estimate(top5), len(replicates)


def _tests_table(runs: list[Run], evidence: Evidence) -> list[str]:
    """Every test of every setting: the mean over its seeds with the 95 % interval (seeds and images)."""
    lines = [
        "| setting | test | seeds | top-1 error (%) [95 % interval] | top-5 error (%) [95 % interval] |",
        "|---|---|---|---|---|",
    ]
    groups = replicate_groups(runs)
    for group, label in zip(groups, group_labels(groups), strict=True):
        tests = {(e.protocol, tuple(e.scales or ())): e for run in group for e in run.evals}
        for (protocol, scales), record in sorted(tests.items()):
            top1, top5, seeds = _replicate_errors(evidence, group[0], record)
            lines.append(
                f"| {label} | {protocol} {'/'.join(map(str, scales))} | {seeds} | "
                f"{top1.text()} | {top5.text()} |"
            )
    return lines


def _has_test(run: Run, record: EvalRecord) -> bool:
    return any(e.protocol == record.protocol and e.scales == record.scales for e in run.evals)


def _run_summary(run: Run) -> dict[str, Any]:
    return {
        "path": str(run.path),
        "experiment": run.name,
        "label": run.title,
        "overrides": run.overrides,
        "study": run.study,
        "model": run.model,
        "final_val": run.final_val,
        "evals": [vars(e) for e in run.evals],
        "slopes": [vars(s) for s in run.slopes],
    }


def runs_section(runs: list[Run], evidence: Evidence) -> Section:
    """Each run and every test of every setting over its seeds; report.json gets the runs."""
    return Section(
        [
            "## Runs",
            "",
            *_run_table(runs),
            "",
            "## Every test, over seeds",
            "",
            *_tests_table(runs, evidence),
            "",
        ],
        summary={"runs": [_run_summary(run) for run in runs]},
    )


# ------------------------------------------------------------------ the paper's tables


def _match_rows(key: str, runs: list[Run]) -> dict[str, tuple[Run, EvalRecord]]:
    """Paper row label -> the first (run, test) that reproduces it: same model, act, protocol, scale."""
    found: dict[str, tuple[Run, EvalRecord]] = {}
    for run in runs:
        for record in run.evals:
            row = find_paper_row(key, run.model.get("name"), act_name(run), record.protocol, record.scales)
            if row is not None and row.label not in found:
                found[row.label] = (run, record)
    return found


def _paper_table(key: str, runs: list[Run], ensembles: list[dict[str, Any]], evidence: Evidence) -> list[str]:
    table = PAPER_TABLES[key]
    matched = _match_rows(key, runs)
    ensemble = next((e for e in ensembles if (e.get("paper_table") or {}).get("key") == key), None)
    if not matched and ensemble is None:
        return []
    lines = [
        f"### {table.title}",
        "",
        f"Paper: ImageNet-2012 {table.split}. Ours: the run's own val split (see the data column).",
        "",
        "| paper row | paper top-1 | paper top-5 | ours top-1 | ours top-5 | our run | our test | data |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.rows:
        ours = _ours_for_row(row, matched, ensemble, evidence)
        lines.append(f"| {row.label} | {fmt_num(row.top1)} | {fmt_num(row.top5)} | {ours} |")
    return [*lines, ""]


def _ours_for_row(
    row: PaperRow,
    matched: dict[str, tuple[Run, EvalRecord]],
    ensemble: dict[str, Any] | None,
    evidence: Evidence,
) -> str:
    if row.protocol == "ensemble" and ensemble is not None:
        ens, data = ensemble["ensemble"], ensemble["data"]
        members = ", ".join(ensemble["ensemble"]["members"])
        return (
            f"{fmt_num(ens['top1'])} | {fmt_num(ens['top5'])} | ensemble of {members} | mean softmax | "
            f"{data.get('name')}, {data.get('scored_images')} images"
        )
    if row.label not in matched:
        return "| | | |" if row.model is None else "– | – | not run | | "
    run, record = matched[row.label]
    top1, top5, seeds = _replicate_errors(evidence, run, record)
    title = f"{run.name}, {seeds} seeds" if seeds > 1 else run.title
    return f"{top1.text()} | {top5.text()} | {title} | {_describe_test(record)} | {_data_line(run)}"


def paper_tables_section(runs: list[Run], ensembles: list[dict[str, Any]], evidence: Evidence) -> Section:
    """Each paper table with a row that a run (or an ensemble.json) reproduces, ours beside the paper's."""
    tables = [line for key in PAPER_TABLES for line in _paper_table(key, runs, ensembles, evidence)]
    return Section(
        [
            "## Paper vs ours",
            "",
            "Ours: the mean over a run's seeds with the 95 % interval of seeds and test images (one seed: the "
            "test images' alone).",
            "",
            *(tables or ["No run reproduces a row of the paper's tables.", ""]),
        ]
    )
