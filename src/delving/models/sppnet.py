"""The paper's nets: models A, B, C and VGG-19 of Table 3, the 14-layer net of Table 1, the 30-layer study net.

They share one shape (plain conv stack -> SPP -> fc1 -> fc2 -> fc3, no BatchNorm), so one family class
builds them all from a `NetSpec` (`specs.py`: the layer types and the net table), the way timm keeps one file
per family. Their test-time contract is in `contract.py`, their builder in `build.py` and their timm
registration in `factory.py` (this file imports no timm).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from delving.models.activations import Activation, initial_negative_slope, make_activation
from delving.models.init import InitScheme, init_conv_, init_linear_
from delving.models.specs import Conv, Pool, Stage, check_levels_fit, feature_map_size, layer_suffix
from delving.models.spp import SpatialPyramidPool

PAPER_FC_STDS = (0.01, 0.01, 0.001)  # Sec. 2.2: fc1/fc2 std 0.01, fc3 std 0.001


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class SPPNet(nn.Module):
    """Conv stack -> SPP -> fc1 -> act -> dropout -> fc2 -> act -> dropout -> fc3 (logits).

    timm's model contract: `forward` is `forward_head(forward_features(x))`, `forward_head` holds the
    pooling (SPP), `feature_info` lists each stage's last activation (before its pool) with its channels
    and stride, and `get_classifier`/`reset_classifier` work on fc3. `forward_dense` runs the paper's
    multi-view test on feature maps: every `map_size` x `map_size` window of the last conv map (the map a
    training crop gives) goes through SPP and the fc layers.
    """

    def __init__(
        self,
        plan: Sequence[Stage],
        spp_levels: Sequence[int],
        num_classes: int = 1000,
        in_chans: int = 3,
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
        if in_chans != 3:
            raise ValueError(
                f"in_chans={in_chans}: the paper's nets take RGB images (3 channels), the input their mean "
                "colour and pretrained cfg describe"
            )
        if width <= 0:
            raise ValueError(f"model.width must be positive, got {width}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {dropout}")
        if len(fc_init_std) != 3:
            raise ValueError(f"model.fc_init_std needs 3 values (fc1, fc2, fc3), got {list(fc_init_std)}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be 0 (no classifier) or more, got {num_classes}")
        self.act = Activation(act)
        self.num_classes, self.in_chans, self.input_size = num_classes, in_chans, input_size
        self.map_size = feature_map_size(plan, input_size)
        check_levels_fit(self.map_size, spp_levels)
        self.fc3_init_std = fc_init_std[2]
        self.features = self._build_features(plan, width)
        self.spp = SpatialPyramidPool(spp_levels)
        self.head_hidden_size = _scaled(fc_width, width)
        self.head = self._build_head(self.num_features * self.spp.num_bins, self.head_hidden_size, dropout)
        self.reset_parameters(init, init_prelu_factor, fc_init_std)

    def _build_features(self, plan: Sequence[Stage], width: float) -> nn.Sequential:
        """The conv stack with the paper's layer names; records `feature_info` at the end of each stage."""
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        self.feature_info: list[dict[str, Any]] = []
        channels, stride = self.in_chans, 1
        for stage_index, stage in enumerate(plan):
            convs_in_stage = sum(isinstance(layer, Conv) for layer in stage)
            conv_index, stage_end, stage_stride = 0, "", stride
            for layer in stage:
                if isinstance(layer, Pool):
                    layers[f"pool{stage_index + 1}"] = nn.MaxPool2d(layer.kernel, layer.stride)
                    stride *= layer.stride
                    continue
                conv_index += 1
                name = layer_suffix(stage_index, conv_index, convs_in_stage)
                out_channels = _scaled(layer.channels, width)
                layers[f"conv{name}"] = nn.Conv2d(
                    channels, out_channels, layer.kernel, layer.stride, layer.padding
                )
                layers[f"act{name}"] = make_activation(self.act, out_channels)
                channels, stride = out_channels, stride * layer.stride
                stage_end, stage_stride = f"act{name}", stride
            if (
                stage_end
            ):  # timm's convention (as its VGG): a stage's map is its last activation, before its pool
                self.feature_info.append(
                    {"num_chs": channels, "reduction": stage_stride, "module": f"features.{stage_end}"}
                )
        self.num_features, self.feature_stride = channels, stride
        return nn.Sequential(layers)

    def _build_head(self, in_features: int, hidden: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(in_features, hidden),
                act_fc1=make_activation(self.act, hidden),
                drop1=nn.Dropout(dropout),
                fc2=nn.Linear(hidden, hidden),
                act_fc2=make_activation(self.act, hidden),
                drop2=nn.Dropout(dropout),
                fc3=self._classifier(hidden, self.num_classes),
            )
        )

    @staticmethod
    def _classifier(hidden: int, num_classes: int, like: nn.Module | None = None) -> nn.Module:
        """fc3, or nn.Identity for num_classes=0 (timm's convention: the net then returns its fc2 features)."""
        if num_classes == 0:
            return nn.Identity()
        if like is None:
            return nn.Linear(hidden, num_classes)
        return nn.Linear(hidden, num_classes, device=like.weight.device, dtype=like.weight.dtype)

    def reset_parameters(
        self, init: InitScheme | str, init_prelu_factor: bool, fc_init_std: Sequence[float]
    ) -> None:
        slope = initial_negative_slope(self.act) if init_prelu_factor else 0.0
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                init_conv_(module, init, slope)
        for linear, std in zip((self.head.fc1, self.head.fc2, self.head.fc3), fc_init_std, strict=True):
            if isinstance(linear, nn.Linear):
                init_linear_(linear, std)

    def get_classifier(self) -> nn.Module:
        return self.head.fc3

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new fc3 for `num_classes` (0: none), initialized as the paper's fc3 (std fc_init_std[2])."""
        if global_pool is not None:
            raise ValueError(f"global_pool={global_pool!r}: these nets pool with SPP (model.spp_levels)")
        if num_classes < 0:
            raise ValueError(f"num_classes must be 0 (no classifier) or more, got {num_classes}")
        self.num_classes = num_classes
        self.head.fc3 = self._classifier(self.head_hidden_size, num_classes, like=self.head.fc2)
        if isinstance(self.head.fc3, nn.Linear):
            init_linear_(self.head.fc3, self.fc3_init_std)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv map (N, num_features, H/stride, W/stride)."""
        return self.features(x)

    def _fc(self, pooled: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        head = self.head
        x = head.drop1(head.act_fc1(head.fc1(pooled)))
        x = head.drop2(head.act_fc2(head.fc2(x)))
        return x if pre_logits else head.fc3(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """SPP of the last conv map, then fc1-fc2 (`pre_logits`: their features) and fc3 (logits)."""
        return self._fc(self.spp(x), pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every training-sized window of the image's feature map: (N, H', W', num_classes)."""
        pooled = self.spp.dense(self.forward_features(x), self.map_size)  # (N, H', W', D)
        # The windows go through the fc layers as one 2-D batch: a channel-wise PReLU reads channels from dim 1.
        return self._fc(pooled.flatten(0, 2)).view(*pooled.shape[:3], -1)
