"""Weight initialization of Sec. 2.2: He (Eq. 10 fan-in, Eq. 14 fan-out) and the Xavier comparison."""

from __future__ import annotations

import math

import torch
from torch import nn

from delving.models.config import InitScheme


def conv_init_std(
    weight_shape: torch.Size | tuple[int, ...], scheme: InitScheme | str, slope: float = 0.0
) -> float:
    """Std of the zero-mean Gaussian for a conv (or linear) weight of shape (d, c, k, k).

    `slope` is the rectifier's initial negative slope `a`; it enters as the (1 + a^2) factor of Eq. 15
    for the He schemes (pass 0 to leave it out, as Eqs. 10 and 14 do).
    """
    scheme = InitScheme(scheme)
    out_channels, in_channels = weight_shape[0], weight_shape[1]
    receptive_field = math.prod(weight_shape[2:])
    fan_out = scheme in (InitScheme.he_fan_out, InitScheme.xavier)
    n = receptive_field * (out_channels if fan_out else in_channels)
    if scheme in (InitScheme.xavier, InitScheme.xavier_fan_in):
        return math.sqrt(1.0 / n)
    return math.sqrt(2.0 / ((1.0 + slope**2) * n))


@torch.no_grad()
def init_conv_(conv: nn.Conv2d, scheme: InitScheme | str, slope: float = 0.0) -> None:
    if conv.weight.is_meta:  # shapes only: no values to draw (torch's meta normal_ imports its compiler, 3 s)
        return
    nn.init.normal_(conv.weight, mean=0.0, std=conv_init_std(conv.weight.shape, scheme, slope))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@torch.no_grad()
def init_linear_(linear: nn.Linear, std: float) -> None:
    # The paper's fc layers are not He-initialized: std 0.01 / 0.001 because the input is not normalized.
    if linear.weight.is_meta:  # shapes only, as in init_conv_
        return
    nn.init.normal_(linear.weight, mean=0.0, std=std)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
