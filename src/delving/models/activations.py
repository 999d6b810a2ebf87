"""The rectifiers compared in the paper: ReLU, PReLU (channel-wise or shared) and Leaky ReLU."""

from __future__ import annotations

from torch import nn

from delving.models.config import Activation

PRELU_INIT_SLOPE = 0.25  # a_i = 0.25 throughout the paper (Sec. 2.1)
LEAKY_RELU_SLOPE = 0.01  # Maas et al.'s fixed slope


def make_activation(kind: Activation | str, num_channels: int) -> nn.Module:
    """Build the rectifier that follows a conv (channels on dim 1) or an fc layer (neurons on dim 1)."""
    kind = Activation(kind)
    if kind is Activation.relu:
        return nn.ReLU(inplace=True)
    if kind is Activation.prelu:
        return nn.PReLU(num_parameters=num_channels, init=PRELU_INIT_SLOPE)
    if kind is Activation.prelu_shared:
        return nn.PReLU(num_parameters=1, init=PRELU_INIT_SLOPE)
    return nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)


def initial_negative_slope(kind: Activation | str) -> float:
    """The slope `a` of Eq. (15) at initialization (0 for ReLU)."""
    kind = Activation(kind)
    if kind in (Activation.prelu, Activation.prelu_shared):
        return PRELU_INIT_SLOPE
    if kind is Activation.leaky_relu:
        return LEAKY_RELU_SLOPE
    return 0.0
