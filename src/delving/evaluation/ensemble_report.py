"""The ensemble report: per-model and ensemble errors next to the paper's, and the per-class analysis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from delving.evaluation.ensemble import (
    EnsembleOptionError,
    check_compatible,
    check_weights,
    class_summary,
    combine,
    greedy_select,
    per_class_changes,
    split_rows,
)
from delving.evaluation.metrics import topk_errors
from delving.evaluation.paper_results import find_paper_row, paper_table
from delving.evaluation.predictions import Predictions
from delving.paper import PAPER_PER_CLASS


def _errors(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    errors = topk_errors(probs, labels)
    return {"top1": round(errors[1], 4), "top5": round(errors[5], 4)}


def _paper_entry(row: Any) -> dict[str, Any] | None:
    return None if row is None else {"label": row.label, "top1": row.top1, "top5": row.top5}


@dataclass
class EnsembleOptions:
    """How to combine: delving-ensemble's options other than the files."""

    weights: list[float] | None = None  # None: the plain mean
    select: bool = False  # greedy forward selection on a held-out part of the images
    select_fraction: float = 0.5
    seed: int = 0
    table: str | None = None  # a paper table key: the paper's numbers beside ours
    worst_classes: int = 10


@dataclass
class EnsembleReport:
    """Per-model and ensemble errors beside the paper's, and the per-class analysis (the JSON's sections).

    `probs` are the (selected) ensemble's probabilities for `rows`: every image, or with selection the
    images not used to select.
    """

    data: dict[str, Any]
    paper_table: dict[str, Any] | None
    models: list[dict[str, Any]]
    ensemble: dict[str, Any]
    selection: dict[str, Any] | None
    per_class: dict[str, Any]
    probs: np.ndarray
    rows: np.ndarray
    files: dict[str, str] = field(default_factory=dict)  # member name -> absolute path

    def to_json(self) -> dict[str, Any]:
        """What ensemble.json holds (and delving-report reads)."""
        fields = ("data", "paper_table", "models", "ensemble", "selection", "per_class", "files")
        return {name: getattr(self, name) for name in fields}

    def to_markdown(self) -> str:
        return render_markdown(self.to_json())

    @property
    def best(self) -> dict[str, Any]:
        """The errors of the ensemble the report ends with: the selected one when there is a selection."""
        return self.selection or self.ensemble


def build_ensemble_report(
    preds: Sequence[Predictions],
    names: Sequence[str],
    options: EnsembleOptions | None = None,
    baseline: Predictions | None = None,
    baseline_name: str = "baseline",
) -> EnsembleReport:
    """Checks that the files describe the same images (before computing anything), then the report."""
    options = options or EnsembleOptions()
    if not preds:
        raise EnsembleOptionError("no predictions files to ensemble")
    if len(set(names)) != len(names):
        raise EnsembleOptionError(f"two predictions files share a name: {list(names)}")
    check_compatible(
        [*preds, baseline] if baseline else preds, [*names, baseline_name] if baseline else names
    )
    check_weights(options.weights, len(preds))
    if options.table is not None:
        paper_table(options.table)  # an unknown table is an error before any work
    labels = preds[0].labels
    if options.select:
        select_rows, rows = split_rows(len(labels), options.select_fraction, options.seed)
    else:
        select_rows, rows = np.array([], dtype=np.int64), np.arange(len(labels))
    probs = combine([p.probs[rows] for p in preds], options.weights)
    report = EnsembleReport(
        data={**preds[0].metadata["dataset"], "num_images": len(labels), "scored_images": len(rows)},
        paper_table=_paper_table_entry(options.table),
        models=[
            _model_entry(pred, name, rows, options.table) for pred, name in zip(preds, names, strict=True)
        ],
        ensemble={
            "members": list(names),
            "weights": None if options.weights is None else [float(w) for w in options.weights],
            **_errors(probs, labels[rows]),
            "paper": _paper_entry(_ensemble_row(options.table)),
        },
        selection=None,
        per_class={},
        probs=probs,
        rows=rows,
    )
    if options.select:
        _add_selection(report, preds, names, select_rows, options)
    report.per_class = _per_class(report, preds[0], options, baseline, baseline_name)
    return report


def _paper_table_entry(table: str | None) -> dict[str, Any] | None:
    if table is None:
        return None
    found = paper_table(table)
    return {"key": table, "title": found.title, "split": found.split}


def _ensemble_row(table: str | None) -> Any:
    if table is None:
        return None
    return next((r for r in paper_table(table).rows if r.protocol == "ensemble"), None)


def _model_entry(pred: Predictions, name: str, rows: np.ndarray, table: str | None) -> dict[str, Any]:
    meta = pred.metadata
    model_name = meta.get("model", {}).get("name")
    act = meta.get("model_config", {}).get("act")
    row = (
        None
        if table is None
        else find_paper_row(table, model_name, act, meta["protocol"], meta.get("scales"))
    )
    checkpoint = meta.get("checkpoint")
    return {
        "name": name,
        "model": model_name,
        "act": act,
        "protocol": meta["protocol"],
        "scales": meta.get("scales"),
        "checkpoint_sha256": checkpoint.get("sha256") if isinstance(checkpoint, dict) else None,
        **_errors(pred.probs[rows], pred.labels[rows]),
        "paper": _paper_entry(row),
    }


def _add_selection(
    report: EnsembleReport,
    preds: Sequence[Predictions],
    names: Sequence[str],
    select_rows: np.ndarray,
    options: EnsembleOptions,
) -> None:
    """Greedy selection on `select_rows`; the report's probabilities become the selected ensemble's."""
    labels, probs = preds[0].labels, [p.probs for p in preds]
    selection = greedy_select(probs, labels, select_rows)
    report.probs = combine([probs[m][report.rows] for m in selection.chosen])
    report.selection = {
        "select_fraction": options.select_fraction,
        "seed": options.seed,
        "selection_images": len(select_rows),
        "chosen": [names[m] for m in selection.chosen],
        "trace": [{"added": names[m], "top5": t5, "top1": t1} for m, t5, t1 in selection.trace],
        **_errors(report.probs, labels[report.rows]),
    }


def _per_class(
    report: EnsembleReport,
    first: Predictions,
    options: EnsembleOptions,
    baseline: Predictions | None,
    baseline_name: str,
) -> dict[str, Any]:
    rows, labels, class_names = report.rows, first.labels[report.rows], first.class_names
    summary = class_summary(report.probs, labels, class_names, options.worst_classes)
    per_class: dict[str, Any] = {
        "k": 5,
        "of": "selected ensemble" if options.select else "ensemble",
        "zero_error_classes": summary.zero_error_classes,
        "classes_scored": summary.classes_scored,
        "worst": [{"class": c, "top5": round(e, 4)} for c, e in summary.worst],
        "paper": PAPER_PER_CLASS,
    }
    if baseline is not None:
        changes = per_class_changes(baseline.probs[rows], report.probs, labels, class_names)
        per_class["vs_baseline"] = {
            "baseline": baseline_name,
            **_errors(baseline.probs[rows], labels),
            "fell": changes.fell,
            "same": changes.same,
            "rose": changes.rose,
            "largest_changes": [
                {"class": c, "baseline_top5": round(b, 4), "top5": round(a, 4)}
                for c, b, a in changes.changes[: options.worst_classes]
            ],
        }
    return per_class


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    """ensemble.md from ensemble.json's contents."""
    data = report["data"]
    lines = [
        "# Ensemble report",
        "",
        f"Data: {data['name']} / {data['split']}, {data['scored_images']} of {data['num_images']} images scored. "
        "Errors in percent (top-k ties go to the lower class index).",
    ]
    table = report["paper_table"]
    if table:
        lines.append(f"Paper: {table['title']} (scored on ImageNet-2012 {table['split']}).")
    lines += _md_models(report)
    notes = [f"- {m['name']}: {m['checkpoint_note']}" for m in report["models"] if m.get("checkpoint_note")]
    if notes:
        lines += ["", "**Not the runs' final checkpoints:**", *notes]
    if report["selection"]:
        lines += _md_selection(report["selection"], data["scored_images"])
    lines += _md_per_class(report["per_class"])
    return "\n".join(lines) + "\n"


def _members_text(models: list[dict[str, Any]]) -> str:
    """ "2 models", or "2 predictions of 1 model" where files share a checkpoint (two protocols of one model);
    a file that does not name its checkpoint counts as a model of its own."""
    checkpoints = {m.get("checkpoint_sha256") or f"file {i}" for i, m in enumerate(models)}
    plural = "s" if len(checkpoints) > 1 else ""
    if len(checkpoints) == len(models):
        return f"{len(models)} model{plural}"
    return f"{len(models)} predictions of {len(checkpoints)} model{plural}"


def _md_models(report: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "| predictions | model | protocol | top-1 | top-5 | paper row | paper top-1 | paper top-5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in report["models"]:
        paper = m["paper"] or {}
        lines.append(
            f"| {m['name']} | {' '.join(filter(None, (m['model'], m['act'])))} | {m['protocol']} {m['scales']} | {m['top1']:.2f} | "
            f"{m['top5']:.2f} | {paper.get('label', '–')} | {_cell(paper.get('top1'))} | {_cell(paper.get('top5'))} |"
        )
    ens = report["ensemble"]
    paper = ens["paper"] or {}
    weights = "" if ens["weights"] is None else f" weights {ens['weights']}"
    lines.append(
        f"| **ensemble** ({_members_text(report['models'])}{weights}) | | | {ens['top1']:.2f} | {ens['top5']:.2f} | "
        f"{paper.get('label', '–')} | {_cell(paper.get('top1'))} | {_cell(paper.get('top5'))} |"
    )
    selection = report["selection"]
    if selection:
        lines.append(
            f"| **selected ensemble** ({', '.join(selection['chosen'])}) | | | {selection['top1']:.2f} | "
            f"{selection['top5']:.2f} | | | |"
        )
    return lines


def _md_selection(selection: dict[str, Any], scored_images: int) -> list[str]:
    return [
        "",
        f"Greedy forward selection on {selection['selection_images']} held-out images "
        f"({selection['select_fraction']:.0%}, seed {selection['seed']}); every error above is on the other "
        f"{scored_images} images.",
        "",
        "| step | added | top-5 (selection images) | top-1 |",
        "|---|---|---|---|",
        *(
            f"| {i + 1} | {s['added']} | {s['top5']:.2f} | {s['top1']:.2f} |"
            for i, s in enumerate(selection["trace"])
        ),
    ]


def _md_per_class(per_class: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Per class (top-5 error of the {per_class['of']})",
        "",
        f"Classes with zero top-5 error: **{per_class['zero_error_classes']}** of {per_class['classes_scored']} "
        f"(paper: {per_class['paper']['zero_top5_error_classes']} of 1000).",
        "",
        "| worst class | top-5 error |",
        "|---|---|",
        *(f"| {w['class']} | {w['top5']:.2f} |" for w in per_class["worst"]),
    ]
    vs = per_class.get("vs_baseline")
    if vs:
        paper_vs = per_class["paper"]["vs_ilsvrc14_entry"]
        lines += [
            "",
            f"Against {vs['baseline']} (top-1 {vs['top1']:.2f}, top-5 {vs['top5']:.2f}): the top-5 error fell in "
            f"**{vs['fell']}** classes, stayed the same in **{vs['same']}**, rose in **{vs['rose']}** (paper vs its "
            f"ILSVRC-14 entry: {paper_vs['fell']} / {paper_vs['same']} / {paper_vs['rose']}).",
            "",
            "| class | baseline top-5 | top-5 |",
            "|---|---|---|",
            *(
                f"| {c['class']} | {c['baseline_top5']:.2f} | {c['top5']:.2f} |"
                for c in vs["largest_changes"]
            ),
        ]
    return lines
