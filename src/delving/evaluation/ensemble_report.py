"""The ensemble report: per-model and ensemble errors next to the paper's, and the per-class analysis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from delving.evaluation.ensemble import (
    check_compatible,
    class_summary,
    combine,
    greedy_select,
    per_class_changes,
    split_rows,
)
from delving.evaluation.metrics import topk_errors
from delving.evaluation.paper_results import PAPER_PER_CLASS, find_paper_row, paper_table
from delving.evaluation.predictions import Predictions


def _errors(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    errors = topk_errors(probs, labels)
    return {"top1": round(errors[1], 4), "top5": round(errors[5], 4)}


def _paper_entry(row: Any) -> dict[str, Any] | None:
    return None if row is None else {"label": row.label, "top1": row.top1, "top5": row.top5}


def build_report(
    preds: Sequence[Predictions],
    names: Sequence[str],
    weights: Sequence[float] | None = None,
    select: bool = False,
    select_fraction: float = 0.5,
    seed: int = 0,
    table: str | None = None,
    baseline: Predictions | None = None,
    baseline_name: str = "baseline",
    worst_classes: int = 10,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(JSON-ready report, the ensemble's probabilities, the rows they are for: every image, or with
    selection the images not used to select). Raises before computing anything when the files do not match."""
    if not preds:
        raise ValueError("no predictions files to ensemble")
    if len(set(names)) != len(names):
        raise ValueError(f"two predictions files share a name: {list(names)}")
    if baseline is None:
        check_compatible(preds, names)
    else:
        check_compatible([*preds, baseline], [*names, baseline_name])
    if table is not None:
        paper_table(table)  # an unknown table is an error before any work
    labels = preds[0].labels
    probs = [p.probs for p in preds]
    class_names = preds[0].class_names
    if select:
        select_rows, rows = split_rows(len(labels), select_fraction, seed)
    else:
        select_rows, rows = np.array([], dtype=np.int64), np.arange(len(labels))

    models = []
    for pred, name in zip(preds, names, strict=True):
        meta = pred.metadata
        model_name = meta.get("model", {}).get("name")
        act = meta.get("model_config", {}).get("act")
        row = (
            None
            if table is None
            else find_paper_row(table, model_name, act, meta["protocol"], meta.get("scales"))
        )
        models.append(
            {
                "name": name,
                "model": model_name,
                "act": act,
                "protocol": meta["protocol"],
                "scales": meta.get("scales"),
                "checkpoint_sha256": meta.get("checkpoint", {}).get("sha256"),
                **_errors(pred.probs[rows], labels[rows]),
                "paper": _paper_entry(row),
            }
        )

    ensemble_probs = combine([p[rows] for p in probs], weights)
    ensemble_row = None
    if table is not None:
        ensemble_row = next((r for r in paper_table(table).rows if r.protocol == "ensemble"), None)
    report: dict[str, Any] = {
        "data": {**preds[0].metadata["dataset"], "num_images": len(labels), "scored_images": len(rows)},
        "paper_table": None
        if table is None
        else {"key": table, "title": paper_table(table).title, "split": paper_table(table).split},
        "models": models,
        "ensemble": {
            "members": list(names),
            "weights": None if weights is None else [float(w) for w in weights],
            **_errors(ensemble_probs, labels[rows]),
            "paper": _paper_entry(ensemble_row),
        },
        "selection": None,
    }
    if select:
        selection = greedy_select(probs, labels, select_rows)
        ensemble_probs = combine([probs[m][rows] for m in selection.chosen])
        report["selection"] = {
            "select_fraction": select_fraction,
            "seed": seed,
            "selection_images": len(select_rows),
            "chosen": [names[m] for m in selection.chosen],
            "trace": [{"added": names[m], "top5": t5, "top1": t1} for m, t5, t1 in selection.trace],
            **_errors(ensemble_probs, labels[rows]),
        }
    summary = class_summary(ensemble_probs, labels[rows], class_names, worst_classes)
    report["per_class"] = {
        "k": 5,
        "of": "selected ensemble" if select else "ensemble",
        "zero_error_classes": summary.zero_error_classes,
        "classes_scored": summary.classes_scored,
        "worst": [{"class": c, "top5": round(e, 4)} for c, e in summary.worst],
        "paper": PAPER_PER_CLASS,
    }
    if baseline is not None:
        changes = per_class_changes(baseline.probs[rows], ensemble_probs, labels[rows], class_names)
        report["per_class"]["vs_baseline"] = {
            "baseline": baseline_name,
            **_errors(baseline.probs[rows], labels[rows]),
            "fell": changes.fell,
            "same": changes.same,
            "rose": changes.rose,
            "largest_changes": [
                {"class": c, "baseline_top5": round(b, 4), "top5": round(a, 4)}
                for c, b, a in changes.changes[:worst_classes]
            ],
        }
    return report, ensemble_probs, rows


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def render_markdown(report: dict[str, Any]) -> str:
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
    lines += [
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
        f"| **ensemble** ({len(ens['members'])} models{weights}) | | | {ens['top1']:.2f} | {ens['top5']:.2f} | "
        f"{paper.get('label', '–')} | {_cell(paper.get('top1'))} | {_cell(paper.get('top5'))} |"
    )
    selection = report["selection"]
    if selection:
        lines.append(
            f"| **selected ensemble** ({', '.join(selection['chosen'])}) | | | {selection['top1']:.2f} | "
            f"{selection['top5']:.2f} | | | |"
        )
        lines += [
            "",
            f"Greedy forward selection on {selection['selection_images']} held-out images "
            f"({selection['select_fraction']:.0%}, seed {selection['seed']}); every error above is on the other "
            f"{data['scored_images']} images.",
            "",
            "| step | added | top-5 (selection images) | top-1 |",
            "|---|---|---|---|",
            *(
                f"| {i + 1} | {s['added']} | {s['top5']:.2f} | {s['top1']:.2f} |"
                for i, s in enumerate(selection["trace"])
            ),
        ]
    per_class = report["per_class"]
    lines += [
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
    return "\n".join(lines) + "\n"
