"""What delving-report does, behind its thin Hydra entry point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from delving.errors import UserError
from delving.evaluation.predictions import load_predictions
from delving.io import check_output_folder
from delving.report.report import build_report, write_report
from delving.report.runs import eval_record_from_predictions, find_runs, load_run, not_of_the_final_checkpoint


class ReportInputError(UserError, ValueError):
    """A file given to delving-report that it cannot use; the message names it."""


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file another tool wrote (ensemble.json, init_check.json), or a one-line error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportInputError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportInputError(f"{what} {path} is unreadable or not JSON ({error})") from None


def read_ensemble(path: str | Path) -> dict[str, Any]:
    report = read_json(path, "ensembles=")
    if not isinstance(report, dict) or not isinstance(report.get("ensemble"), dict):
        raise ReportInputError(
            f"ensembles= {path} is not an ensemble.json of delving-ensemble (no 'ensemble')"
        )
    return {**report, "source": str(path)}


def _owner(predictions: Path, runs: list) -> Any:
    """The run whose last.pt the predictions file was made from (delving-eval records the path)."""
    checkpoint = load_predictions(predictions).metadata.get("checkpoint")
    path = checkpoint.get("path") if isinstance(checkpoint, dict) else checkpoint
    for run in runs:
        if path and Path(path).resolve().parent == run.path.resolve():
            return run
    raise ReportInputError(
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
    check_output_folder(output_dir, "output_dir", beside=True)
    loaded = [load_run(path) for path in find_runs(runs)]
    for file in map(Path, predictions):
        run = _owner(file, loaded)
        record = eval_record_from_predictions(file)
        why = not_of_the_final_checkpoint(record, run)
        if why is not None:
            raise ReportInputError(f"predictions={file}: {why}")
        if all(Path(e.source).resolve() != file.resolve() for e in run.evals):
            run.evals.append(record)
    report = build_report(
        loaded,
        ensembles=[read_ensemble(p) for p in ensembles],
        init_checks={Path(p).parent.name: read_json(p, "init_checks=") for p in init_checks},
        title=title,
        command=command,
    )
    return write_report(report, output_dir)
