"""Build a net by name from its config, and register every net in timm's registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from timm.models import register_model
from torch import nn

from delving.models.sppnet import NET_PLANS, SPPNet

MODEL_NAMES = tuple(NET_PLANS)
TIMM_PREFIX = "delving_"
# What the model options of configs/model/*.yaml pass straight to SPPNet.
_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


def create_net(name: str, spp_levels: list[int] | tuple[int, ...] | None = None, **options: Any) -> SPPNet:
    """The net `name` (one of MODEL_NAMES) with the paper's SPP levels unless `spp_levels` is given."""
    name = getattr(name, "value", name)
    if name not in NET_PLANS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    plan, paper_levels = NET_PLANS[name]
    net = SPPNet(plan, spp_levels or paper_levels, **options)
    net.model_name = name
    net.pretrained_cfg = {
        "architecture": TIMM_PREFIX + name,
        "input_size": (3, net.input_size, net.input_size),
        "num_classes": net.num_classes,
        "classifier": "head.fc3",
        "first_conv": "features."
        + next(n for n, m in net.features.named_children() if isinstance(m, nn.Conv2d)),
    }
    return net


def build_model(cfg: Mapping[str, Any]) -> SPPNet:
    """Build from a model config (configs/model/*.yaml, a DictConfig or a plain dict)."""
    options = {key: getattr(value, "value", value) for key, value in dict(cfg).items()}
    name = options.pop("name")
    if options.get("spp_levels") is not None:
        options["spp_levels"] = [int(n) for n in options["spp_levels"]]
    if options.get("fc_init_std") is not None:
        options["fc_init_std"] = [float(s) for s in options["fc_init_std"]]
    else:
        options.pop("fc_init_std", None)
    return create_net(name, **options)


def _timm_entry(name: str):
    def entry(pretrained: bool = False, **kwargs: Any) -> SPPNet:
        if pretrained:
            raise ValueError(f"{TIMM_PREFIX}{name} has no released weights; train it with delving-train")
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        return create_net(name, **kwargs)

    entry.__name__ = TIMM_PREFIX + name
    entry.__qualname__ = entry.__name__
    entry.__doc__ = f"The paper's {name} (see delving.models.sppnet)."
    entry.__module__ = __name__
    return entry


for _name in MODEL_NAMES:
    globals()[TIMM_PREFIX + _name] = register_model(_timm_entry(_name))

TIMM_MODEL_NAMES = tuple(TIMM_PREFIX + name for name in MODEL_NAMES)
