"""The speed helpers behind scripts/bench_train.py: FLOPs of a step against hand counts, and the timer."""

from __future__ import annotations

import torch
from torch import nn

from delving.engine.throughput import matmul_peak_flops, time_per_step, train_step_flops


def test_step_flops_are_the_hand_count_and_backward_is_twice_forward_past_the_first_layer() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 5))  # fmt: skip
    forward, total = train_step_flops(net, torch.randn(2, 3, 6, 6), torch.zeros(2, dtype=torch.int64))
    conv1, conv2, fc = 2 * 2 * 36 * 8 * 27, 2 * 2 * 36 * 4 * 72, 2 * 2 * 144 * 5  # 2 FLOPs per MAC
    assert forward == conv1 + conv2 + fc
    assert total - forward == conv1 + 2 * (conv2 + fc)  # the first conv needs no input gradient
    assert all(p.grad is None for p in net.parameters())


def test_the_timer_runs_warm_up_then_at_least_the_asked_steps() -> None:
    calls = []
    seconds, steps, _ = time_per_step(lambda: calls.append(1), torch.device("cpu"), 2, 5, 0.0)
    assert (len(calls), steps) == (7, 5) and seconds >= 0
    assert matmul_peak_flops(torch.device("cpu"), size=32, seconds=0.01, dtype=torch.float32) > 0
