"""Training launched the way users launch it, in the background, so tests can signal it mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from helpers import warm
from helpers.runs import REPO, TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env


def train_command(overrides: list[str], nproc: int = 1) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "delving.train", *TINY_DATA, *TINY_MODEL, *TINY_TRAIN, *overrides]


def start_train(
    overrides: list[str], nproc: int = 1, cwd: Path = REPO, foreground: bool = False, **env: str
) -> subprocess.Popen | warm.Started:
    """The training command in the background, its output merged on `stdout`: one process is forked warm,
    torchrun starts cold (its agent's handling of the signal is part of what such tests stop). `foreground`:
    its own process group with SIGINT at its default, as a terminal's foreground job."""
    return warm.start(train_command(overrides, nproc), cli_env(**env), cwd, foreground=foreground)


def wait_for_step(
    run_dir: Path, step: int, process: subprocess.Popen | warm.Started, timeout: float = 120
) -> None:
    """Until metrics.jsonl has a train record at `step` or later (the run is mid-training)."""
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before step {step}:\n{process.stdout.read()[-4000:]}")
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) >= step:
                        return
                except json.JSONDecodeError:
                    pass
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")
