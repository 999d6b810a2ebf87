"""Shared test settings: small thread counts (2 cores), a private data cache, helpers to run the CLIs."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.configs import compose_config
from helpers.runs import EQUAL_RUN, KILL_STEP, cli_env, run_train
from omegaconf import DictConfig

from delving.config import register_all


@pytest.fixture(scope="session", autouse=True)
def private_data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("data_cache")
    os.environ["DELVING_DATA_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session", autouse=True)
def registered_schemas() -> None:
    register_all()


@pytest.fixture
def compose_train() -> Callable[[list[str]], DictConfig]:
    """Composes delving-train's config (no Hydra run config) with the given overrides."""

    return compose_config


# Scenario runs, shared by the trainer and lifecycle tests (each made once per session, when first asked for).


@pytest.fixture(scope="session")
def single_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process, dropout on, a checkpoint every 2 steps, wandb offline: 2 epochs uninterrupted."""
    run = tmp_path_factory.mktemp("single")
    run_train(run, ["train.checkpoint_every_steps=2", "logger.wandb.mode=offline"])
    return run


@pytest.fixture(scope="session")
def killed_and_resumed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """single_run's settings, SIGKILLed right after step 5 (mid-epoch 0), then relaunched."""
    run = tmp_path_factory.mktemp("killed")
    killed = run_train(run, ["train.checkpoint_every_steps=2"], check=False,
                       env=cli_env(DELVING_KILL_AT_STEP=str(KILL_STEP)))  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_train(run, ["train.checkpoint_every_steps=2", "resume=auto"])
    return run


@pytest.fixture(scope="session")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Dropout off: one process, two (gloo), and two SIGKILLed mid-epoch then relaunched."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {name: root / name for name in ("one_proc", "two_proc", "two_killed")}
    run_train(runs["one_proc"], EQUAL_RUN)
    run_train(runs["two_proc"], EQUAL_RUN, nproc=2)
    killed = run_train(runs["two_killed"], EQUAL_RUN, nproc=2, check=False,
                       env=cli_env(DELVING_KILL_AT_STEP=str(KILL_STEP)))  # fmt: skip
    assert killed.returncode != 0
    run_train(runs["two_killed"], [*EQUAL_RUN, "resume=auto"], nproc=2)
    return runs


# DDP's tuning knobs together (static_graph refuses gradient accumulation: preflight, PyTorch issue 143580).
TUNED_DDP = [
    "train.ddp.bucket_cap_mb=0.01",
    "train.ddp.gradient_as_bucket_view=true",
    "train.ddp.static_graph=true",
]


@pytest.fixture(scope="session")
def tuned_ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ddp_runs' two-process run with every DDP knob turned (tiny buckets: several all-reduces per step)."""
    run = tmp_path_factory.mktemp("ddp_tuned")
    run_train(run, [*EQUAL_RUN, *TUNED_DDP], nproc=2)
    return run
