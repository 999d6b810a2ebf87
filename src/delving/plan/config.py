"""delving-plan's config: delving-train's whole config (the run it plans) plus the plan's own few keys."""

from __future__ import annotations

from dataclasses import dataclass

from delving.engine.config import AppConfig

# The plan's own keys: never part of the planned run's name, so the plan finds the folder the run will use.
PLAN_KEYS = ("budget_s", "plan_dir", "run_dir")


@dataclass
class PlanAppConfig(AppConfig):
    budget_s: float = 180.0  # the measuring time, all stages together (imports and start-up come on top)
    plan_dir: str = "outputs/plans"  # plan.md and plan.json go here, never into the planned run's folder
    run_dir: str | None = (
        None  # the planned run's folder; None: the folder delving-train names from the same overrides
    )
