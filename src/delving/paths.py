"""The `paths` config group's schema (configs/paths/default.yaml): where runs and reports are written."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PathsConfig:
    outputs: str = "outputs"  # delving-train's run directories: <outputs>/<experiment_name>/<run name>
    runs_dir: str = "outputs/paper"  # the paper-scale runs (configs/paths/default.yaml reads $DELVING_RUNS)
    minis_dir: str = "outputs/minis"  # the mini studies' runs (scripts/run_minis.sh)
