"""The LR rules: sched=plateau (an option) does not fire on a steady improvement."""

from __future__ import annotations

from collections.abc import Callable

import torch
from omegaconf import DictConfig

from delving.engine.optim import EpochScheduler


def test_plateau_keeps_the_lr_while_the_error_improves_steadily(
    compose_train: Callable[[list[str]], DictConfig],
) -> None:
    """Issue 11's curve: val error 49 % improving by 0.1 point per epoch; the old settings (patience 3,
    1 % relative) dropped the LR at epochs 5 and 10."""
    cfg = compose_train(["sched=plateau"])
    param = torch.nn.Parameter(torch.zeros(1))
    scheduler = EpochScheduler(torch.optim.SGD([param], lr=0.01), cfg.sched)
    for epoch in range(25):
        scheduler.end_of_epoch(49.0 - 0.1 * epoch)
        assert scheduler.lr == 0.01, f"LR dropped after epoch {epoch}"


def test_plateau_drops_the_lr_when_the_error_stalls(compose_train: Callable[[list[str]], DictConfig]) -> None:
    cfg = compose_train(["sched=plateau"])
    param = torch.nn.Parameter(torch.zeros(1))
    scheduler = EpochScheduler(torch.optim.SGD([param], lr=0.01), cfg.sched)
    for _ in range(cfg.sched.patience + 2):
        scheduler.end_of_epoch(40.0)
    assert abs(scheduler.lr - 0.001) < 1e-12
