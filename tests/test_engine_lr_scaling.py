"""Large-batch training (Goyal et al. 2017): the linear LR scaling rule and the per-step gradual warm-up, both
off by default, the LR curve step by step, and an exact resume in the middle of the warm-up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers.runs import TINY_DATA, TINY_MODEL, TINY_TRAIN
from omegaconf import DictConfig

from delving.dist import DistributedContext
from delving.engine.optim import EpochScheduler, build_optimizer, lr_scale, warmup_factor
from delving.engine.trainer import Trainer
from delving.models import build_model

Compose = Callable[[list[str]], DictConfig]
GOYAL = ["optim.scale_lr=true", "sched.warmup_unit=step", "optim.lr=0.01"]


def _step_lrs(cfg: DictConfig, batch: int, epochs: int, steps_per_epoch: int) -> list[float]:
    """The LR every step trains at, as the Trainer drives the scheduler (before_step, then each epoch's end)."""
    scale = lr_scale(cfg.optim, batch)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr * scale)
    scheduler = EpochScheduler(optimizer, cfg.sched, epochs, scale, steps_per_epoch)
    optimizer.step()  # no gradient: changes nothing (and keeps the scheduler from warning)
    lrs = []
    for epoch in range(epochs):
        for step in range(steps_per_epoch):
            scheduler.before_step(epoch * steps_per_epoch + step)
            lrs.append(scheduler.lr)
        scheduler.end_of_epoch(50.0)
    return lrs


def test_scaling_and_the_per_step_warm_up_are_off_by_default(compose_train: Compose) -> None:
    cfg = compose_train([])
    assert not cfg.optim.scale_lr and cfg.optim.reference_batch_size == 128
    assert cfg.sched.warmup_unit == "epoch" and not cfg.train.ddp.static_graph
    assert lr_scale(cfg.optim, 4096) == 1.0
    # The paper's recipe: 1e-2 for every step of epochs 0-49, whatever the batch.
    assert set(_step_lrs(compose_train(["sched.milestones=[2]"]), 1024, 2, 3)) == {0.01}


def test_linear_scaling_multiplies_lr_by_global_over_reference_batch(compose_train: Compose) -> None:
    cfg = compose_train(["optim.scale_lr=true", "optim.reference_batch_size=256"])
    assert lr_scale(cfg.optim, 8192) == 32.0
    net = build_model(
        {"name": "net14", "width": 0.0625, "num_classes": 4, "input_size": 24, "spp_levels": [2, 1]}
    )
    optimizer = build_optimizer(net, cfg.optim, lr_scale(cfg.optim, 8192))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.32] * len(optimizer.param_groups))


def test_per_step_warm_up_rises_from_the_reference_lr_to_k_times_it(compose_train: Compose) -> None:
    """Batch 1024 = 8 x 128: 2 warm-up epochs of 4 steps from 0.01 up to 0.08, then milestones from 0.08."""
    cfg = compose_train([*GOYAL, "sched=milestones", "sched.milestones=[3]", "sched.warmup_epochs=2"])
    ramp = [0.01 + 0.07 * (t + 1) / 9 for t in range(8)]
    assert _step_lrs(cfg, 1024, 5, 4) == pytest.approx([*ramp, *[0.08] * 4, *[0.008] * 8], rel=1e-12)
    assert ramp[0] == pytest.approx(0.01, abs=0.008) and ramp[-1] == pytest.approx(0.08, abs=0.008)


def test_per_step_warm_up_without_scaling_is_the_epoch_ramp_drawn_per_step(compose_train: Compose) -> None:
    cfg = compose_train(["sched=constant", "sched.warmup_epochs=1", "sched.warmup_unit=step", "optim.lr=0.1"])
    assert _step_lrs(cfg, 128, 2, 3) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1], rel=1e-12)
    assert (
        warmup_factor(0, 1, 0.0) == 0.5
    )  # one warm-up step: (0 + 1) / (1 + 1), as epoch 0 of a 1-epoch ramp


def test_min_lr_scales_with_the_lr(compose_train: Compose) -> None:
    """Plateau's floor and cosine's end move with the scaled LR: two drops of 1e-2 x 8 end at 1e-4 x 8."""
    cfg = compose_train(["optim.scale_lr=true", "sched=plateau", "sched.patience=0", "sched.threshold=0"])
    lrs = _step_lrs(cfg, 1024, 6, 1)  # the first val error sets the best; each later one is no better
    assert lrs == pytest.approx(
        [0.08, 0.08, 0.008, 0.0008, 0.0008, 0.0008]
    )  # unscaled, it would go on to 8e-5
    cosine = compose_train(
        ["optim.scale_lr=true", "sched=cosine", "sched.min_lr=0.001", "sched.warmup_epochs=0"]
    )
    floor = 0.008  # 0.001 x 8; epoch 2 of 3 is a quarter of the way from the floor to the top
    assert _step_lrs(cosine, 1024, 3, 1) == pytest.approx([0.08, floor + 0.072 * 0.75, floor + 0.072 * 0.25])


@pytest.mark.slow
def test_a_trainer_resumed_mid_warm_up_sets_the_same_lr(compose_train: Compose, tmp_path: Path) -> None:
    """The Trainer sets the warm-up's LR from the global step before each step: 6 steps per epoch, ref 4."""
    cfg = compose_train([
        *TINY_DATA, *TINY_MODEL, *TINY_TRAIN, *GOYAL, "optim.reference_batch_size=4",
        "sched.warmup_epochs=2", "model.dropout=0.0", "resume=null",
    ])  # fmt: skip
    trainer = Trainer(cfg, tmp_path, DistributedContext(0, 1, 0, torch.device("cpu")))
    try:
        assert trainer.train_loader.steps_per_epoch == 6
        lrs = []
        trainer.scheduler.optimizer.step = lambda *a, **k: lrs.append(trainer.scheduler.lr)  # type: ignore[method-assign]
        trainer.train_epoch()
        assert lrs == pytest.approx([0.01 + 0.01 * (t + 1) / 13 for t in range(6)], rel=1e-12)
        state = trainer.scheduler.state_dict()
        trainer.optimizer.param_groups[0]["lr"] = 123.0  # a resumed optimizer's stale LR is overwritten
        trainer.scheduler.load_state_dict(state)
        trainer.scheduler.before_step(6)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 + 0.01 * 7 / 13, rel=1e-12)
    finally:
        trainer.close()
