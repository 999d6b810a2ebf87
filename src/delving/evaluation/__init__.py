"""The paper's test protocols (centre crop, 10-view, dense multi-view on feature maps, multi-scale),
predictions files, top-k error, and the ensemble evaluator."""

from delving.checkpoint import CheckpointError, load_model
from delving.evaluation.config import EvalConfig, Protocol, effective_scales
from delving.evaluation.ensemble import EnsembleMismatchError, check_compatible, combine, greedy_select
from delving.evaluation.ensemble_report import EnsembleOptions, EnsembleReport, build_ensemble_report
from delving.evaluation.evaluator import EvalResult, evaluate, job_probabilities
from delving.evaluation.metrics import per_class_error, topk_errors, true_class_rank
from delving.evaluation.predictions import (
    Predictions,
    PredictionsFileError,
    load_predictions,
    save_predictions,
)

__all__ = [
    "CheckpointError",
    "EnsembleMismatchError",
    "EnsembleOptions",
    "EnsembleReport",
    "EvalConfig",
    "EvalResult",
    "Predictions",
    "PredictionsFileError",
    "Protocol",
    "build_ensemble_report",
    "check_compatible",
    "combine",
    "effective_scales",
    "evaluate",
    "greedy_select",
    "job_probabilities",
    "load_model",
    "load_predictions",
    "per_class_error",
    "save_predictions",
    "topk_errors",
    "true_class_rank",
]
