"""What every Hydra entry point shares: where the configs live, and the run-directory resolvers."""

from __future__ import annotations

import os
import time
from pathlib import Path

from omegaconf import OmegaConf

# The repository's configs/ (an editable install or a checkout); DELVING_CONFIG_DIR points elsewhere.
CONFIG_DIR = str(Path(os.environ.get("DELVING_CONFIG_DIR", Path(__file__).resolve().parents[3] / "configs")))


def run_id() -> str:
    """One name per launch that every rank computes alike, so all ranks share one run directory.

    SLURM job id, else torchrun's rendezvous id, else (torchrun without one) the launcher's pid,
    else the start time of this single process.
    """
    if "SLURM_JOB_ID" in os.environ:
        array_task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{os.environ['SLURM_JOB_ID']}" + (f"-{array_task}" if array_task else "")
    rendezvous = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if rendezvous != "none":
        return f"torchrun-{rendezvous}"
    if "LOCAL_RANK" in os.environ:
        return f"torchrun-pid{os.getppid()}"
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def main_rank_only(value: str) -> str | None:
    """`value` on global rank 0, None elsewhere: Hydra's .hydra/ folder is then written once."""
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    return value if rank == "0" else None


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("delving_run_id", run_id, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("delving_main_rank_only", main_rank_only, replace=True)
