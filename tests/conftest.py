"""Shared test settings: small thread counts (2 cores), a private data cache, helpers to run the CLIs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from delving.cli.common import CONFIG_DIR
from delving.config import register_all

REPO = Path(__file__).resolve().parents[1]

# A tiny synthetic set and a tiny net: every training test finishes in seconds on 2 cores.
TINY_DATA = [
    "data=synthetic",
    "data.synthetic_classes=4",
    "data.synthetic_train_per_class=12",
    "data.synthetic_val_per_class=4",
    "data.synthetic_min_size=32",
    "data.synthetic_max_size=40",
    "data.crop_size=24",
    "data.scale_min=28",
    "data.scale_max=36",
    "data.test_scale=28",
    "data.num_workers=0",
]
TINY_MODEL = [
    "model=net14",
    "model.width=0.0625",
    "model.num_classes=4",
    "model.input_size=24",
    "model.spp_levels=[2,1]",
]
TINY_TRAIN = [
    "train.epochs=2",
    "train.batch_size=8",
    "train.device=cpu",
    "train.final_eval=false",
    "logger.wandb.mode=disabled",
    "logger.log_every_steps=2",
    "logger.progress_bar=false",
    "sched=constant",
    "optim.lr=0.01",
]


@pytest.fixture(scope="session", autouse=True)
def private_data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("data_cache")
    os.environ["DELVING_DATA_CACHE"] = str(cache)
    return cache


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_train(
    run_dir: Path, overrides: list[str], nproc: int = 1, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """`python -m delving.train` (under torchrun when nproc > 1) with the tiny settings and `overrides`."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command = [
        *launcher,
        "-m",
        "delving.train",
        *TINY_DATA,
        *TINY_MODEL,
        *TINY_TRAIN,
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(
        [*command, *overrides], capture_output=True, text=True, env=env or cli_env(), cwd=REPO, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


@pytest.fixture(scope="session", autouse=True)
def registered_schemas() -> None:
    register_all()


@pytest.fixture
def compose_train() -> Callable[[list[str]], DictConfig]:
    """Composes delving-train's config (no Hydra run config) with the given overrides."""

    def compose_with(overrides: list[str], config_name: str = "train") -> DictConfig:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=False)

    return compose_with


# Scenario runs, shared by the trainer and lifecycle tests (each made once per session, when first asked for).
EQUAL_RUN = ["model.dropout=0.0", "train.checkpoint_every_steps=2"]  # no dropout: 1 rank vs 2 ranks compare
KILL_STEP = 5  # steps per epoch: 48 images / batch 8 = 6; killed mid-epoch 0 after the step-4 checkpoint


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
