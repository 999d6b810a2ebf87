"""The paper's test protocols (centre crop, 10-view, dense multi-view on feature maps, multi-scale),
predictions files, top-k error, and the ensemble evaluator.

The names below are imported on first use (PEP 562), so `import delving.evaluation.config` (the entry
points' schemas) does not pull in the models and torchvision.
"""

from __future__ import annotations

from delving._lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "delving.checkpoint",
    "load_model": "delving.checkpoint",
    "EvalConfig": "delving.evaluation.config",
    "Protocol": "delving.evaluation.config",
    "effective_scales": "delving.evaluation.config",
    "EnsembleMismatchError": "delving.evaluation.ensemble",
    "check_compatible": "delving.evaluation.ensemble",
    "combine": "delving.evaluation.ensemble",
    "greedy_select": "delving.evaluation.ensemble",
    "EnsembleOptions": "delving.evaluation.ensemble_report",
    "EnsembleReport": "delving.evaluation.ensemble_report",
    "build_ensemble_report": "delving.evaluation.ensemble_report",
    "EvalResult": "delving.evaluation.evaluator",
    "evaluate": "delving.evaluation.evaluator",
    "job_probabilities": "delving.evaluation.evaluator",
    "per_class_error": "delving.evaluation.metrics",
    "topk_errors": "delving.evaluation.metrics",
    "true_class_rank": "delving.evaluation.metrics",
    "Predictions": "delving.evaluation.predictions",
    "PredictionsFileError": "delving.evaluation.predictions",
    "load_predictions": "delving.evaluation.predictions",
    "save_predictions": "delving.evaluation.predictions",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
