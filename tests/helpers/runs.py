"""The tiny training settings and the training command, `python -m delving.train` (forked warm, see warm.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import warm

REPO = Path(__file__).resolve().parents[2]

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


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_train(
    run_dir: Path,
    overrides: list[str],
    nproc: int = 1,
    env: dict[str, str] | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """`python -m delving.train` (under torchrun when nproc > 1) with the tiny settings and `overrides`; one
    process is forked from a warm server (helpers/warm.py), as the command would run minus its imports."""
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
    result = warm.run([*command, *overrides], env=env or cli_env(), cwd=REPO, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


# The scenario runs (conftest's fixtures) use these; tests compare against them with the same settings.
EQUAL_RUN = ["model.dropout=0.0", "train.checkpoint_every_steps=2"]  # no dropout: 1 rank vs 2 ranks compare
KILL_STEP = 5  # steps per epoch: 48 images / batch 8 = 6; killed mid-epoch 0 after the step-4 checkpoint
