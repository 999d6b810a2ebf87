"""Optimizer parameter groups: weight decay on conv/fc weights only (Sec. 2.1: none on PReLU slopes)."""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(model: nn.Module, weight_decay: float, bias_decay: bool = False) -> list[dict[str, Any]]:
    """Two groups: multi-dimensional weights (decayed) and biases + PReLU slopes (not decayed).

    Any 0-d or 1-d tensor (a bias, a PReLU slope vector or scalar) goes undecayed, whatever
    the module, so timm nets with norms get the same rule. `bias_decay` (optim.bias_decay) moves the
    parameters named `*.bias` to the decayed group; slopes are never decayed (Sec. 2.1).
    """
    decayed, undecayed = [], []
    for name, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
        if not parameter.requires_grad:
            continue
        decay = parameter.ndim > 1 or (bias_decay and name.endswith(".bias"))
        (decayed if decay else undecayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay, "name": "weights"},
        {"params": undecayed, "weight_decay": 0.0, "name": "biases_and_slopes"},
    ]
