"""The model config schema (Hydra ConfigStore node `model`): types and allowed values are checked on compose."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from delving.models.activations import Activation
from delving.models.init import InitScheme
from delving.models.sppnet import NET_SPECS

ModelName = Enum("ModelName", {name: name for name in NET_SPECS}, type=str)


@dataclass
class ModelConfig:
    name: ModelName = ModelName.model_a  # type: ignore[attr-defined]
    act: Activation = Activation.prelu
    init: InitScheme = InitScheme.he_fan_out
    init_prelu_factor: bool = False  # the (1 + a^2) factor of Eq. 15; the paper does not say it was used
    width: float = 1.0  # multiplies conv and fc widths, for small runs
    # None: the training data set's class count (delving-train fills it in before building the net); a set
    # value that differs from the data set is refused.
    num_classes: int | None = None
    # The training crop (delving-train refuses a data.crop_size that differs); the SPP window of the dense
    # test is the last map of this size.
    input_size: int = 224
    spp_levels: list[int] | None = None  # None: the paper's levels for the net
    dropout: float = 0.5
    fc_init_std: list[float] | None = None  # None: the paper's (0.01, 0.01, 0.001)
