"""What every Hydra entry point shares: where the configs live, and the run-directory resolvers."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from delving.engine.run_dir import run_name_from_overrides

# The repository's configs/ (an editable install or a checkout); DELVING_CONFIG_DIR points elsewhere.
CONFIG_DIR = str(Path(os.environ.get("DELVING_CONFIG_DIR", Path(__file__).resolve().parents[3] / "configs")))


def run_name(given: str | None) -> str:
    """The run directory's name: run_name= when given, else named from the overrides that define the run.

    Every rank of a launch, a relaunch, a requeued or a resubmitted job computes the same name, so the same
    command always finds its run (see engine/run_dir.py).
    """
    if given:
        return str(given)
    from hydra.core.hydra_config import HydraConfig

    return run_name_from_overrides(list(HydraConfig.get().overrides.task))


def main_rank_only(value: str) -> str | None:
    """`value` on global rank 0, None elsewhere: Hydra's .hydra/ folder is then written once."""
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    return value if rank == "0" else None


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("delving_run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("delving_main_rank_only", main_rank_only, replace=True)
