"""Training speed against the hardware: a step's FLOPs (PyTorch's FlopCounterMode), the device's own bf16
matmul peak measured in the same run, MFU, device-synchronized step times, peak memory, profiler tables.

Used by scripts/bench_train.py and scripts/bench_data.py; MFU is always against the *measured* peak of the
machine the benchmark ran on, so it says how close to that machine our step is, not to a data sheet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(
    device: torch.device, size: int = 8192, seconds: float = 1.0, dtype: torch.dtype = torch.bfloat16
) -> float:
    """The best FLOP/s of size^3 matmuls over three rounds of about `seconds` / 3 each."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up: cuBLAS picks its kernel
    synchronize(device)
    best = 0.0
    for _ in range(3):
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 3 or runs < 2:
            a @ b
            runs += 1
            if runs % 10 == 0 or device.type != "cuda":
                synchronize(device)
        synchronize(device)
        best = max(best, 2 * size**3 * runs / (time.perf_counter() - start))
    return best


def train_step_flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(forward, forward + backward) FLOPs of one step on this batch, counted by FlopCounterMode (2 per MAC;
    the first conv needs no input gradient, so the total is a little under 3x the forward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss = F.cross_entropy(model(images), labels)
    forward = counter.get_total_flops()
    with counter:
        loss.backward()
    model.zero_grad(set_to_none=True)
    return forward, forward + counter.get_total_flops()


def time_per_step(
    step: Callable[[], Any], device: torch.device, warmup: int, min_steps: int, min_seconds: float
) -> tuple[float, int, float]:
    """(seconds per step, steps timed, seconds of warm-up): at least `min_steps` and `min_seconds` timed after
    `warmup` steps (which hold cudnn's autotuning and torch.compile's compilation)."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    start, steps = time.perf_counter(), 0
    while steps < min_steps or time.perf_counter() - start < min_seconds:
        step()
        steps += 1
        if device.type == "cuda" and steps % 5 == 0:
            synchronize(device)  # keeps the host from queueing far ahead of the clock
    synchronize(device)
    return (time.perf_counter() - start) / steps, steps, warmup_s


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """The most memory tensors held on the GPU since the last reset; None on the CPU (not tracked)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def profile_table(
    step: Callable[[], Any], device: torch.device, steps: int, out: Path, rows: int = 30
) -> str:
    """Profiles `steps` steps; writes the op table (by self device time on a GPU) to `out`; returns the
    top ops as one line: where the step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(averages.table(sort_by=sort, row_limit=rows), encoding="utf-8")
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    times = sorted(((getattr(e, attr), e.key) for e in averages), reverse=True)
    total = sum(t for t, _ in times) or 1.0
    return ", ".join(f"{name} {100 * t / total:.0f}%" for t, name in times[:5])
