"""The paper's nets: models A, B, C and VGG-19 of Table 3, the 14-layer net of Table 1, the 30-layer study net.

They share one shape (plain conv stack -> SPP -> fc1 -> fc2 -> fc3, no BatchNorm), so one family
class builds them all from a layer plan, the way timm keeps one file per family.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from delving.models.activations import Activation, initial_negative_slope, make_activation
from delving.models.init import InitScheme, init_conv_, init_linear_
from delving.models.spp import SpatialPyramidPool, check_levels_fit

PAPER_FC_STDS = (0.01, 0.01, 0.001)  # Sec. 2.2: fc1/fc2 std 0.01, fc3 std 0.001


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


Stage = list[Conv | Pool]


def _convs3(count: int, channels: int) -> Stage:
    return [Conv(3, channels, padding=1) for _ in range(count)]


def _convs2_alternating(count: int, channels: int) -> Stage:
    # Two successive 2x2 convs keep the map size: no pad on the first, pad 1 on the second (DESIGN.md).
    return [Conv(2, channels, padding=i % 2) for i in range(count)]


def _table3_plan(per_stage: int, widths: tuple[int, int, int]) -> list[Stage]:
    stem = [Conv(7, 96, stride=2, padding=3), Pool(2, 2)]
    w2, w3, w4 = widths
    return [
        stem,
        _convs3(per_stage, w2) + [Pool(2, 2)],
        _convs3(per_stage, w3) + [Pool(2, 2)],
        _convs3(per_stage, w4),
    ]


def _small_net_plan(stage3_convs: int) -> list[Stage]:
    return [
        [Conv(7, 64, stride=2, padding=3), Pool(3, 3)],
        _convs2_alternating(4, 128) + [Pool(2, 2)],
        _convs2_alternating(stage3_convs, 256),
    ]


# Layer plans: a list of stages; the first conv of stage s is named conv{s+1}_1 (the stem is conv1).
NET_PLANS: dict[str, tuple[list[Stage], tuple[int, ...]]] = {
    "model_a": (_table3_plan(5, (256, 512, 512)), (7, 3, 2, 1)),
    "model_b": (_table3_plan(6, (256, 512, 512)), (7, 3, 2, 1)),
    "model_c": (_table3_plan(6, (384, 768, 896)), (7, 3, 2, 1)),
    # The paper's reproduced VGG-19 has SPP: its 7x7 level on the 14x14 conv5 map is VGG's pool5.
    "vgg19": (
        [
            _convs3(2, 64) + [Pool(2, 2)],
            _convs3(2, 128) + [Pool(2, 2)],
            _convs3(4, 256) + [Pool(2, 2)],
            _convs3(4, 512) + [Pool(2, 2)],
            _convs3(4, 512),
        ],
        (7, 3, 2, 1),
    ),
    "net14": (_small_net_plan(6), (6, 3, 2, 1)),  # Table 1: 11 convs + 3 fc
    "net30": (_small_net_plan(22), (6, 3, 2, 1)),  # Fig. 3: 16 extra 2x2/256 convs in the last stage
}


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def feature_map_size(plan: Sequence[Stage], input_size: int) -> int:
    size = input_size
    for layer in (layer for stage in plan for layer in stage):
        padding = layer.padding if isinstance(layer, Conv) else 0
        size = (size + 2 * padding - layer.kernel) // layer.stride + 1
        if size < 1:
            raise ValueError(f"model.input_size={input_size} is too small for this net: the map vanishes")
    return size


class SPPNet(nn.Module):
    """Conv stack -> SPP -> fc1 -> act -> dropout -> fc2 -> act -> dropout -> fc3 (logits).

    `forward_dense` runs the paper's multi-view test on feature maps: every `map_size` x `map_size`
    window of the last conv map (the map a training crop gives) goes through SPP and the fc layers.
    """

    def __init__(
        self,
        plan: Sequence[Stage],
        spp_levels: Sequence[int],
        num_classes: int = 1000,
        act: Activation | str = Activation.prelu,
        init: InitScheme | str = InitScheme.he_fan_out,
        init_prelu_factor: bool = False,
        width: float = 1.0,
        fc_width: int = 4096,
        input_size: int = 224,
        dropout: float = 0.5,
        fc_init_std: Sequence[float] = PAPER_FC_STDS,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"model.width must be positive, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if len(fc_init_std) != 3:
            raise ValueError(f"model.fc_init_std needs 3 values (fc1, fc2, fc3), got {list(fc_init_std)}")
        self.act = Activation(act)
        self.num_classes = num_classes
        self.input_size = input_size
        self.map_size = feature_map_size(plan, input_size)
        check_levels_fit(self.map_size, spp_levels)
        self.feature_stride = 1
        for layer in (layer for stage in plan for layer in stage):
            self.feature_stride *= layer.stride

        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = 3
        for stage_index, stage in enumerate(plan):
            convs_in_stage = sum(isinstance(layer, Conv) for layer in stage)
            conv_index = 0
            for layer in stage:
                if isinstance(layer, Pool):
                    layers[f"pool{stage_index + 1}"] = nn.MaxPool2d(layer.kernel, layer.stride)
                    continue
                conv_index += 1
                # The paper's names: conv1 for a lone stem conv, conv2_1, conv2_2, ... in the stages.
                name = f"{stage_index + 1}" if convs_in_stage == 1 else f"{stage_index + 1}_{conv_index}"
                out_channels = _scaled(layer.channels, width)
                layers[f"conv{name}"] = nn.Conv2d(
                    in_channels, out_channels, layer.kernel, layer.stride, layer.padding
                )
                layers[f"act{name}"] = make_activation(self.act, out_channels)
                in_channels = out_channels
        self.features = nn.Sequential(layers)
        self.num_features = in_channels
        self.spp = SpatialPyramidPool(spp_levels)

        hidden = _scaled(fc_width, width)
        self.head = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(in_channels * self.spp.num_bins, hidden),
                act_fc1=make_activation(self.act, hidden),
                drop1=nn.Dropout(dropout),
                fc2=nn.Linear(hidden, hidden),
                act_fc2=make_activation(self.act, hidden),
                drop2=nn.Dropout(dropout),
                fc3=nn.Linear(hidden, num_classes),
            )
        )
        self.reset_parameters(init, init_prelu_factor, fc_init_std)

    def reset_parameters(
        self, init: InitScheme | str, init_prelu_factor: bool, fc_init_std: Sequence[float]
    ) -> None:
        slope = initial_negative_slope(self.act) if init_prelu_factor else 0.0
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                init_conv_(module, init, slope)
        for linear, std in zip((self.head.fc1, self.head.fc2, self.head.fc3), fc_init_std, strict=True):
            init_linear_(linear, std)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.spp(self.forward_features(x)))

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every training-sized window of the image's feature map: (N, H', W', num_classes)."""
        pooled = self.spp.dense(self.forward_features(x), self.map_size)  # (N, H', W', D)
        # The windows go through the head as one 2-D batch: a channel-wise PReLU reads channels from dim 1.
        return self.forward_head(pooled.flatten(0, 2)).view(*pooled.shape[:3], -1)

    def get_classifier(self) -> nn.Module:
        return self.head.fc3
