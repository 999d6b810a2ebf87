"""train.reproducible: pins what decides the arithmetic, so one commit gives the same numbers on any x86-64
CPU of the last decade (on for the demo and the mini experiments; off for the paper's GPU runs, where it
costs speed).

What it pins, and when torch reads it:
- the CPU kernels' instruction set: ATEN_CPU_CAPABILITY=avx2 (every x86-64 CPU since Intel Haswell, 2013,
  and AMD Excavator, 2015). ATen reads it once, at the first kernel it dispatches (not at `import torch`);
  oneDNN reads ONEDNN_MAX_CPU_ISA=AVX2 at its first primitive (a convolution), and TorchInductor's C++
  kernels (train.compile) follow ATEN_CPU_CAPABILITY. `pin()` sets both before the first kernel of the task
  and checks that ATen took it, so a kernel run too early is an error, not a silent difference;
- the intra-op threads (PINNED_THREADS): a reduction split over another number of threads sums in another
  order;
- deterministic algorithms (torch.use_deterministic_algorithms, cuDNN without benchmarking), and on a GPU
  CUBLAS_WORKSPACE_CONFIG=:4096:8, which cuBLAS needs for deterministic matrix products.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("delving")

PINNED_ISA = "avx2"  # ATEN_CPU_CAPABILITY's spelling; torch reports it as "AVX2"
PINNED_ENV = {
    "ATEN_CPU_CAPABILITY": PINNED_ISA,
    "ONEDNN_MAX_CPU_ISA": PINNED_ISA.upper(),
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}
# One: every machine has it, and the minis (scripts/run_minis.sh, two runs on two cores) already ran so.
PINNED_THREADS = 1
# What must be equal for two launches to compute the same numbers (a resume compares them).
ARITHMETIC_KEYS = ("cpu_capability", "onednn_max_cpu_isa", "threads", "deterministic_algorithms")


class PinnedTooLateError(RuntimeError):
    """A CPU kernel ran before pin(): this process computes with another instruction set (a bug)."""


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def _cpu_has_avx2() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return True  # not Linux: trust torch's own choice below
    return " avx2" in cpuinfo.read_text()


def pin() -> None:
    """train.reproducible=true: the instruction set, the threads and deterministic algorithms, in this process
    and the processes it starts (loader workers inherit the environment). Call it before the task's first
    tensor operation."""
    if _is_x86():
        os.environ.update(PINNED_ENV)
        capability = (
            torch.backends.cpu.get_cpu_capability()
        )  # computed now, from the variable, unless already
        if capability != PINNED_ISA.upper():
            if _cpu_has_avx2():
                raise PinnedTooLateError(
                    f"train.reproducible: torch computes with {capability}, not {PINNED_ISA.upper()}: a kernel ran "
                    "before delving.reproducible.pin()"
                )
            log.warning(
                "train.reproducible: this CPU has no AVX2 (torch uses %s): its numbers differ from an AVX2 CPU's",
                capability,
            )
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = PINNED_ENV["CUBLAS_WORKSPACE_CONFIG"]
        log.warning(
            "train.reproducible: a %s CPU computes with other kernels than an x86-64 one: the same numbers as "
            "another %s machine's, not an x86-64 machine's", platform.machine(), platform.machine(),
        )  # fmt: skip
    torch.set_num_threads(PINNED_THREADS)
    torch.use_deterministic_algorithms(
        True, warn_only=True
    )  # an op without one warns, naming itself (untested on a GPU)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def arithmetic() -> dict[str, Any]:
    """What decided this process's arithmetic, as the checkpoint, metrics.jsonl and predictions record it."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "threads": torch.get_num_threads(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "cpu": _cpu_name(),
        "torch": str(torch.__version__),  # a plain str: weights_only loading refuses TorchVersion
    }
