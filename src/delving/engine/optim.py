"""SGD in Caffe's momentum form, and the LR schedules of the paper's recipe."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from delving.engine.config import MomentumForm, OptimConfig, SchedConfig, SchedKind
from delving.models.params import param_groups


class CaffeSGD(torch.optim.Optimizer):
    """V <- mu V + lr (g + wd w); w <- w - V (Caffe's SGDSolver).

    Same as torch.optim.SGD while the LR is constant; at an LR drop, Caffe's velocity keeps the
    old LR's steps and decays them, where PyTorch's rescales the whole buffer at once.
    """

    def __init__(
        self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0
    ) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(
                f"invalid CaffeSGD settings: lr={lr}, momentum={momentum}, weight_decay={weight_decay}"
            )
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = torch.enable_grad()(closure)() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, grads, alpha=group["lr"])
            torch._foreach_sub_(params, buffers)
        return loss


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if MomentumForm(cfg.momentum_form) is MomentumForm.caffe:
        return CaffeSGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


class EpochScheduler:
    """One LR rule per epoch: plateau of val error (the paper), fixed milestones, or constant."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedConfig) -> None:
        self.kind = SchedKind(cfg.name)
        self.optimizer = optimizer
        if self.kind is SchedKind.plateau:
            self.inner: Any = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=cfg.factor,
                patience=cfg.patience,
                threshold=cfg.threshold,
                min_lr=cfg.min_lr,
            )
        elif self.kind is SchedKind.milestones:
            self.inner = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, list(cfg.milestones), gamma=cfg.factor
            )
        else:
            self.inner = None

    def end_of_epoch(self, val_top1_error: float | None) -> None:
        if self.kind is SchedKind.plateau:
            if val_top1_error is not None:
                self.inner.step(val_top1_error)
        elif self.inner is not None:
            self.inner.step()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "inner": self.inner.state_dict() if self.inner is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind.value:
            raise ValueError(
                f"checkpoint's LR schedule is {state['kind']!r}, this run's is {self.kind.value!r}"
            )
        if self.inner is not None:
            self.inner.load_state_dict(state["inner"])
