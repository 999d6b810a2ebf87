"""The paper's nets as data: layer types, the net table (`NET_SPECS`) and the SPP bin arithmetic.

No torch here: the config schemas list the nets and check their shapes from this file, so a command refuses
a wrong key or size before it spends seconds importing torch. `sppnet.py` builds the nets from these specs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "NET_SPECS",
    "Conv",
    "NetSpec",
    "Pool",
    "Stage",
    "check_levels_fit",
    "feature_map_size",
    "layer_suffix",
    "level_fits",
    "spp_window",
]


def spp_window(map_size: int, level: int) -> tuple[int, int]:
    """(kernel, stride) of the n x n level on a map of side `map_size`."""
    return math.ceil(map_size / level), map_size // level


def level_fits(map_size: int, level: int) -> bool:
    if level < 1 or map_size < level:
        return False
    kernel, stride = spp_window(map_size, level)
    return (map_size - kernel) // stride + 1 == level


def check_levels_fit(map_size: int, levels: Sequence[int]) -> None:
    bad = [n for n in levels if not level_fits(map_size, n)]
    if bad:
        fitting = [n for n in range(1, map_size + 1) if level_fits(map_size, n)]
        raise ValueError(
            f"SPP levels {list(bad)} do not fit a {map_size}x{map_size} feature map: SPP-net's windows "
            f"(ceil(a/n), stride floor(a/n)) give a different number of bins. Levels that fit this map: "
            f"{fitting}. Choose model.spp_levels among them or change model.input_size."
        )


@dataclass(frozen=True)
class Conv:
    kernel: int
    channels: int
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True)
class Pool:
    kernel: int
    stride: int


Stage = Sequence[Conv | Pool]


def _convs3(count: int, channels: int) -> tuple[Conv, ...]:
    return tuple(Conv(3, channels, padding=1) for _ in range(count))


def _convs2_alternating(count: int, channels: int) -> tuple[Conv, ...]:
    # Two successive 2x2 convs keep the map size: no pad on the first, pad 1 on the second (DESIGN.md).
    return tuple(Conv(2, channels, padding=i % 2) for i in range(count))


def layer_suffix(stage_index: int, conv_index: int, convs_in_stage: int) -> str:
    """The paper's layer names: conv1 for a lone stem conv, conv2_1, conv2_2, ... in the stages."""
    return f"{stage_index + 1}" if convs_in_stage == 1 else f"{stage_index + 1}_{conv_index}"


def feature_map_size(plan: Sequence[Stage], input_size: int) -> int:
    size = input_size
    for layer in (layer for stage in plan for layer in stage):
        padding = layer.padding if isinstance(layer, Conv) else 0
        size = (size + 2 * padding - layer.kernel) // layer.stride + 1
        if size < 1:
            raise ValueError(f"model.input_size={input_size} is too small for this net: the map vanishes")
    return size


@dataclass(frozen=True)
class NetSpec:
    """A net's architecture: its stages (the first conv of stage s is conv{s+1}_1, a lone stem conv is
    conv1) and the SPP levels the paper gives it."""

    plan: tuple[tuple[Conv | Pool, ...], ...]
    spp_levels: tuple[int, ...]

    @property
    def first_conv(self) -> str:
        """The stem conv's module name (timm's `first_conv`)."""
        convs = sum(isinstance(layer, Conv) for layer in self.plan[0])
        return f"features.conv{layer_suffix(0, 1, convs)}"

    def map_size(self, input_size: int, spp_levels: Sequence[int] | None = None) -> int:
        """The last map of an `input_size` crop (the SPP window of the dense test); ValueError when the map
        vanishes or the levels do not fit it."""
        size = feature_map_size(self.plan, input_size)
        check_levels_fit(size, list(spp_levels or self.spp_levels))
        return size


def _table3_spec(per_stage: int, widths: tuple[int, int, int]) -> NetSpec:
    w2, w3, w4 = widths
    stem = (Conv(7, 96, stride=2, padding=3), Pool(2, 2))
    stages = (
        _convs3(per_stage, w2) + (Pool(2, 2),),
        _convs3(per_stage, w3) + (Pool(2, 2),),
        _convs3(per_stage, w4),
    )
    return NetSpec((stem, *stages), (7, 3, 2, 1))


def _small_net_spec(stage3_convs: int) -> NetSpec:
    return NetSpec(
        (
            (Conv(7, 64, stride=2, padding=3), Pool(3, 3)),
            _convs2_alternating(4, 128) + (Pool(2, 2),),
            _convs2_alternating(stage3_convs, 256),
        ),
        (6, 3, 2, 1),
    )


NET_SPECS: dict[str, NetSpec] = {
    "model_a": _table3_spec(5, (256, 512, 512)),
    "model_b": _table3_spec(6, (256, 512, 512)),
    "model_c": _table3_spec(6, (384, 768, 896)),
    # The paper's reproduced VGG-19 has SPP: its 7x7 level on the 14x14 conv5 map is VGG's pool5.
    "vgg19": NetSpec(
        (
            _convs3(2, 64) + (Pool(2, 2),),
            _convs3(2, 128) + (Pool(2, 2),),
            _convs3(4, 256) + (Pool(2, 2),),
            _convs3(4, 512) + (Pool(2, 2),),
            _convs3(4, 512),
        ),
        (7, 3, 2, 1),
    ),
    "net14": _small_net_spec(6),  # Table 1: 11 convs + 3 fc
    "net30": _small_net_spec(22),  # Fig. 3: 16 extra 2x2/256 convs in the last stage
}
