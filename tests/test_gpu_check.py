"""scripts/gpu_check.py, the first run on a new GPU machine: its --smoke mode runs the same code on the CPU, so a
check that breaks shows here, not on the cluster."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import warm
from helpers.runs import cli_env

from delving.data.device_decode import jpeg_decoders

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_the_smoke_mode_runs_every_check_on_the_cpu_and_prints_one_table(tmp_path: Path) -> None:
    scratch = lambda: set(Path(tempfile.gettempdir()).glob("bench_train_*"))  # noqa: E731
    before = scratch()
    result = warm.run([sys.executable, str(SCRIPT), "--smoke"], env=cli_env(), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert scratch() == before and list(tmp_path.iterdir()) == []  # its data and run folders are gone
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("check "))
    rows = {line[: lines[header].index("status")].strip(): line for line in lines[header + 1 :]}
    expected_ok = [
        "float32 math (train.tf32)",
        "checkpoint without a GPU",
        "RNG resume, 8 GPUs -> 1",
        *(f"EXIF 6 via {name} on cpu" for name in jpeg_decoders()),
    ]
    for check in expected_ok:
        assert f"{check}" in rows and " ok " in rows[check], (check, result.stdout)
    assert "all on ['cpu']" in rows["checkpoint without a GPU"]
    assert " n/a " in rows["sync-free loader + step"] and "CPU steps ran" in rows["sync-free loader + step"]
    steps = [row for check, row in rows.items() if check.startswith("step model_")]
    assert len(steps) == 4 and all("ms/step" in row for row in steps)
    assert "FAIL" not in result.stdout


@pytest.mark.slow
def test_without_a_gpu_and_without_smoke_it_says_so_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=tmp_path, env=cli_env(CUDA_VISIBLE_DEVICES=""), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "no GPU visible" in result.stderr and "--smoke" in result.stderr
