"""The model config schema (Hydra ConfigStore node `model`): types and allowed values are checked on compose,
the values a type cannot refuse by `ModelConfig.check()` (delving-train's preflight calls it)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from delving.errors import ConfigError, require_at_least
from delving.models.specs import NET_SPECS


class Activation(str, Enum):
    relu = "relu"
    prelu = "prelu"  # one learned slope per channel (per neuron on fc layers), the paper's default
    prelu_shared = "prelu_shared"  # one learned slope per layer
    leaky_relu = "leaky_relu"


class InitScheme(str, Enum):
    he_fan_out = "he_fan_out"  # Eq. 14, 1/2 * k^2 * d * Var[w] = 1: what the paper's large models use
    he_fan_in = "he_fan_in"  # Eq. 10, 1/2 * k^2 * c * Var[w] = 1
    xavier = "xavier"  # k^2 * d * Var[w] = 1: the single-direction Gaussian form of Figs. 2-3 (fan-out)
    xavier_fan_in = "xavier_fan_in"  # k^2 * c * Var[w] = 1


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

    def check(self) -> None:
        """Refuses a value the net cannot be built with, in one line naming the key (before any work)."""
        if not self.width > 0:
            raise ConfigError(
                f"model.width={self.width}: the width multiplier must be positive (1.0: the paper's)"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout={self.dropout}: give a probability in [0, 1)")
        if self.fc_init_std is not None and len(self.fc_init_std) != 3:
            raise ConfigError(
                f"model.fc_init_std={list(self.fc_init_std)}: give 3 stds (fc1, fc2, fc3) or null"
            )
        if self.num_classes is not None:
            what = "leave it out (the data set's count) or give 1 or more"
            require_at_least("model.num_classes", self.num_classes, 1, what)
        try:
            NET_SPECS[self.name.value].map_size(self.input_size, self.spp_levels)
        except ValueError as error:
            raise ConfigError(
                f"model={self.name.value} model.input_size={self.input_size}: {error}"
            ) from None
