"""Training launched the way users launch it, in the background, so tests can signal it mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from helpers.runs import REPO, TINY_DATA, TINY_MODEL, TINY_TRAIN, cli_env


def train_command(overrides: list[str], nproc: int = 1) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "delving.train", *TINY_DATA, *TINY_MODEL, *TINY_TRAIN, *overrides]


def start_train(overrides: list[str], nproc: int = 1, cwd: Path = REPO, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        train_command(overrides, nproc), cwd=cwd, env=cli_env(**env), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
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
