"""SGD in Caffe's momentum form, the LR schedules of the paper's recipe, and the opt-in AdamW, warm-up,
cosine schedule and large-batch LR scaling (PyTorch's own AdamW and LambdaLR, on the same param groups)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from delving.engine.config import (
    MomentumForm,
    OptimConfig,
    OptimKind,
    SchedConfig,
    SchedKind,
    WarmupUnit,
)
from delving.errors import UserError
from delving.models.params import param_groups


def _plain(method: Callable[..., Any]) -> Callable[..., Any]:
    """An Optimizer method without torch's `_disable_dynamo` wrapper: the wrapper only keeps torch's compiler
    from tracing the method, and imports that compiler (~2 s) at its first call to say so. delving compiles
    the model, never the optimizer, so the plain method (the same code) serves."""
    return getattr(method, "__wrapped__", method)


class CaffeSGD(torch.optim.Optimizer):
    """V <- mu V + lr (g + wd w); w <- w - V (Caffe's SGDSolver).

    Same as torch.optim.SGD while the LR is constant; at an LR drop, Caffe's velocity keeps the
    old LR's steps and decays them, where PyTorch's rescales the whole buffer at once.
    """

    add_param_group = _plain(torch.optim.Optimizer.add_param_group)
    zero_grad = _plain(torch.optim.Optimizer.zero_grad)
    state_dict = _plain(torch.optim.Optimizer.state_dict)
    load_state_dict = _plain(torch.optim.Optimizer.load_state_dict)

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


def lr_scale(cfg: OptimConfig, global_batch: int) -> float:
    """Goyal et al.'s linear scaling rule: k = global batch / reference batch with optim.scale_lr, else 1."""
    if not getattr(cfg, "scale_lr", False):
        return 1.0
    return global_batch / int(cfg.reference_batch_size)


def build_optimizer(model: nn.Module, cfg: OptimConfig, scale: float = 1.0) -> torch.optim.Optimizer:
    """The configured optimizer at lr x `scale` (lr_scale's factor; 1: optim.lr as given)."""
    groups = param_groups(model, cfg.weight_decay, bias_decay=cfg.bias_decay)
    lr = cfg.lr * scale
    if OptimKind(getattr(cfg, "name", OptimKind.sgd)) is OptimKind.adamw:
        # Each group's weight_decay wins over AdamW's default: decoupled decay on weights, none on biases/slopes.
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps)
    if MomentumForm(cfg.momentum_form) is MomentumForm.caffe:
        return CaffeSGD(groups, lr=lr, momentum=cfg.momentum)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def warmup_factor(step: int, warmup_steps: int, start: float) -> float:
    """The per-step warm-up multiplier: start + (1 - start) (t + 1) / (N + 1) for step t < N, then 1.

    start = 1/k under LR scaling (Goyal et al.: from the reference batch's LR to k times it); start = 0 makes
    it the per-epoch ramp (e + 1) / (W + 1) drawn per step.
    """
    if step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * (step + 1) / (warmup_steps + 1)


def lr_factor(
    cfg: SchedConfig, epochs: int, base_lr: float, steps_per_epoch: int = 0, warmup_start: float = 0.0
) -> Callable[[int], float]:
    """The LR multiplier for epoch e (0-based) of a `warmup_epochs` warm-up then milestones/constant/cosine.

    Warm-up: epoch e < W trains at lr (e + 1) / (W + 1); per step (warmup_unit=step), an epoch starts at the
    warmup_factor of its first step. Cosine: epoch W + t of T = epochs - W trains at
    min_lr + (lr - min_lr) (1 + cos(pi t / T)) / 2, so the first epoch after the warm-up is at lr and the
    curve would reach min_lr at epoch `epochs`; it depends on the total, so a cosine run cannot be extended.
    `base_lr` is optim.lr before any scaling (min_lr scales with it).
    """
    kind, warmup = SchedKind(cfg.name), int(cfg.warmup_epochs)
    milestones, factor = sorted(int(m) for m in cfg.milestones), float(cfg.factor)
    floor = min(float(cfg.min_lr) / base_lr, 1.0) if base_lr > 0 else 0.0
    per_step = WarmupUnit(getattr(cfg, "warmup_unit", WarmupUnit.epoch)) is WarmupUnit.step

    def multiplier(epoch: int) -> float:
        if epoch < warmup:
            if per_step:
                return warmup_factor(epoch * steps_per_epoch, warmup * steps_per_epoch, warmup_start)
            return (epoch + 1) / (warmup + 1)
        if kind is SchedKind.milestones:
            return factor ** sum(epoch >= m for m in milestones)
        if kind is SchedKind.cosine:
            progress = min(epoch - warmup, epochs - warmup) / (epochs - warmup)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return multiplier


class EpochScheduler:
    """One LR rule per epoch: plateau of val error (the paper), fixed milestones, or constant; opt-in: a
    linear warm-up (`warmup_epochs`) and a cosine schedule over `epochs`, as a LambdaLR.

    Per epoch, as the paper's rules: the LR changes only at an epoch's end, so a mid-epoch resume needs no
    step count. Without a warm-up, milestones and constant stay PyTorch's MultiStepLR and no scheduler (the
    checkpoints of runs before the knobs resume as they were). The one exception, warmup_unit=step, sets the
    LR before each step of the warm-up from the global step alone (`before_step`), so a resume is still exact.

    `scale` is the optimizer's LR scaling (lr_scale): min_lr scales with it, and a per-step warm-up starts at
    the unscaled LR.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: SchedConfig,
        epochs: int | None = None,
        scale: float = 1.0,
        steps_per_epoch: int = 0,
    ) -> None:
        self.kind = SchedKind(cfg.name)
        self.optimizer = optimizer
        warmup = int(getattr(cfg, "warmup_epochs", 0))
        per_step = WarmupUnit(getattr(cfg, "warmup_unit", WarmupUnit.epoch)) is WarmupUnit.step
        if per_step and steps_per_epoch < 1:
            raise ValueError("sched.warmup_unit=step needs the steps per epoch")
        # Goyal et al. ramp from the reference batch's LR (1/k of the scaled one); unscaled, from ~0.
        self.warmup_start = 1.0 / scale if scale > 1 else 0.0
        self.warmup_steps = warmup * steps_per_epoch if per_step else 0
        if warmup < 0:
            raise UserError(f"sched.warmup_epochs must be 0 or more, got {warmup}")
        if self.kind is SchedKind.plateau and warmup:
            raise UserError(
                "sched=plateau takes no warm-up (its LR follows the val error); use sched=milestones, constant "
                "or cosine with sched.warmup_epochs, or set sched.warmup_epochs=0"
            )
        if self.kind is SchedKind.cosine or warmup:
            if self.kind is SchedKind.cosine and (epochs is None or epochs <= warmup):
                raise UserError(
                    f"sched=cosine needs train.epochs ({epochs}) above sched.warmup_epochs ({warmup})"
                )
            base_lr = optimizer.param_groups[0]["lr"] / scale
            rule = lr_factor(cfg, epochs or 0, base_lr, steps_per_epoch, self.warmup_start)
            self.inner = torch.optim.lr_scheduler.LambdaLR(optimizer, rule)
        elif self.kind is SchedKind.plateau:
            self.inner: Any = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer,
                mode="min",
                factor=cfg.factor,
                patience=cfg.patience,
                threshold=cfg.threshold,
                min_lr=cfg.min_lr * scale,
            )
        elif self.kind is SchedKind.milestones:
            self.inner = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, list(cfg.milestones), gamma=cfg.factor
            )
        else:
            self.inner = None

    def before_step(self, global_step: int) -> None:
        """warmup_unit=step: the LR of this step of the warm-up (a no-op after it, and per epoch)."""
        if global_step >= self.warmup_steps:
            return
        factor = warmup_factor(global_step, self.warmup_steps, self.warmup_start)
        for group, base in zip(self.optimizer.param_groups, self.inner.base_lrs, strict=True):
            group["lr"] = base * factor

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
