"""What delving-report does, behind its thin Hydra entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from delving.report.report import build_report, write_report
from delving.report.runs import eval_record_from_predictions, find_runs, load_run


def _owner(predictions: Path, runs: list) -> Any:
    """The run whose last.pt the predictions file was made from (delving-eval records the path)."""
    from delving.evaluation.predictions import load_predictions

    checkpoint = load_predictions(predictions).metadata.get("checkpoint")
    path = checkpoint.get("path") if isinstance(checkpoint, dict) else checkpoint
    for run in runs:
        if path and Path(path).resolve().parent == run.path.resolve():
            return run
    raise ValueError(
        f"{predictions}: made from {path}, which is not in any of the runs given; add its run directory to runs="
    )


def run_report(
    runs: list[str],
    predictions: list[str],
    ensembles: list[str],
    init_checks: list[str],
    output_dir: str,
    title: str,
    command: str,
) -> Path:
    loaded = [load_run(path) for path in find_runs(runs)]
    for file in map(Path, predictions):
        run = _owner(file, loaded)
        if all(Path(e.source).resolve() != file.resolve() for e in run.evals):
            run.evals.append(eval_record_from_predictions(file))
    report = build_report(
        loaded,
        ensembles=[json.loads(Path(p).read_text()) for p in ensembles],
        init_checks={Path(p).parent.name: json.loads(Path(p).read_text()) for p in init_checks},
        title=title,
        command=command,
    )
    return write_report(report, output_dir)
