"""Shared test settings: small thread counts (2 cores), a private data cache, helpers to run the CLIs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

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


# Uninterrupted, killed-and-resumed and DDP reference runs, shared by the trainer and lifecycle tests.
EQUAL_RUN = ["model.dropout=0.0", "train.checkpoint_every_steps=2"]
KILL_STEP = 5  # steps per epoch: 48 images / batch 8 = 6; killed mid-epoch 0 after the step-4 checkpoint


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out: dict[str, Path] = {}
    # One process, dropout on: uninterrupted, and killed (SIGKILL) mid-epoch then resumed.
    out["single"] = root / "single"
    run_train(out["single"], ["train.checkpoint_every_steps=2", "logger.wandb.mode=offline"])
    out["single_killed"] = root / "single_killed"
    killed = run_train(out["single_killed"], ["train.checkpoint_every_steps=2"], check=False,
                       env=cli_env(DELVING_KILL_AT_STEP=str(KILL_STEP)))  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_train(out["single_killed"], ["train.checkpoint_every_steps=2", "resume=auto"])
    # No dropout: one process vs two (gloo), and two processes killed and resumed.
    out["one_proc"] = root / "one_proc"
    run_train(out["one_proc"], EQUAL_RUN)
    out["two_proc"] = root / "two_proc"
    run_train(out["two_proc"], EQUAL_RUN, nproc=2)
    out["two_killed"] = root / "two_killed"
    killed = run_train(out["two_killed"], EQUAL_RUN, nproc=2, check=False,
                       env=cli_env(DELVING_KILL_AT_STEP=str(KILL_STEP)))  # fmt: skip
    assert killed.returncode != 0
    run_train(out["two_killed"], [*EQUAL_RUN, "resume=auto"], nproc=2)
    return out
