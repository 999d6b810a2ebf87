"""train.reproducible as users meet it: an epoch of the demo (its net and recipe, a smaller synthetic set)
launched under two CPU instruction-set caps. With the switch on, both compute with AVX2 kernels on one thread
and end bitwise equal; with it off, each computes with its cap's kernels and the numbers differ."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.runs import REPO, cli_env

from delving.checkpoint import Checkpoint
from delving.evaluation.predictions import load_predictions

DEMO_EPOCH = [
    "experiment=demo",
    "train.epochs=1",
    "train.final_eval=false",
    "data.synthetic_train_per_class=3",  # 300 images: 4 steps of the demo's batch 64
    "data.synthetic_val_per_class=2",
    "train.device=cpu",
    "logger.wandb.mode=disabled",
    "logger.progress_bar=false",
]
# Two caps every x86-64 CPU of the last decade can run: no vector kernels (SSE4.1 for oneDNN), and none (the
# CPU's best: AVX2 here, AVX-512 on newer servers).
CAPS = {"low": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}, "native": {}}


def _train(run: Path, overrides: list[str], **env: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "delving.train", *DEMO_EPOCH, *overrides, f"hydra.run.dir={run}"],
        capture_output=True, text=True, cwd=REPO, timeout=600, env=cli_env(OMP_NUM_THREADS="2", **env),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def capped_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[bool, str], Path]:
    root = tmp_path_factory.mktemp("reproducible")
    runs = {}
    for switch in (True, False):
        for cap, env in CAPS.items():
            runs[switch, cap] = root / f"{'on' if switch else 'off'}-{cap}"
            _train(runs[switch, cap], [f"train.reproducible={str(switch).lower()}"], **env)
    return runs


def _checkpoint(run: Path) -> Checkpoint:
    return Checkpoint.load(run / "last.pt")


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _checkpoint(a).model, _checkpoint(b).model
    return all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_the_switch_on_gives_bitwise_equal_numbers_under_two_instruction_set_caps(capped_runs) -> None:
    assert _same_weights(capped_runs[True, "low"], capped_runs[True, "native"])
    for cap in CAPS:
        record = _checkpoint(capped_runs[True, cap]).arithmetic
        assert record["cpu_capability"] == "AVX2" and record["onednn_max_cpu_isa"] == "AVX2", record
        assert record["threads"] == 1 and record["deterministic_algorithms"] is True


@pytest.mark.slow
def test_the_switch_off_computes_with_each_caps_kernels_and_differs(capped_runs) -> None:
    low, native = _checkpoint(capped_runs[False, "low"]), _checkpoint(capped_runs[False, "native"])
    assert low.arithmetic["cpu_capability"] == "DEFAULT" and native.arithmetic["cpu_capability"] != "DEFAULT"
    assert low.arithmetic["threads"] == native.arithmetic["threads"] == 2  # OMP_NUM_THREADS: not pinned
    assert not _same_weights(capped_runs[False, "low"], capped_runs[False, "native"])


@pytest.mark.slow
def test_metrics_record_each_launchs_arithmetic(capped_runs) -> None:
    records = [
        json.loads(line) for line in (capped_runs[True, "low"] / "metrics.jsonl").read_text().splitlines()
    ]
    (launch,) = [r for r in records if r["type"] == "arithmetic"]
    assert launch["step"] == 0 and launch["cpu_capability"] == "AVX2" and launch["threads"] == 1


@pytest.mark.slow
def test_delving_eval_of_a_reproducible_run_pins_too(capped_runs, tmp_path: Path) -> None:
    """Under the low cap, delving-eval of the switch-on run computes with AVX2 kernels, as the run did."""
    output = tmp_path / "center.npz"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "delving-eval"), f"checkpoint={capped_runs[True, 'low']}",
         "eval=center", "device=cpu", f"output={output}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env=cli_env(**CAPS["low"]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = load_predictions(output).metadata["arithmetic"]
    assert record["cpu_capability"] == "AVX2" and record["threads"] == 1
