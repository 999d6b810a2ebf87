"""The nets in timm: each registered with its test-time contract (a timm pretrained cfg), built by timm's
builder.

The file follows timm's family layout: the cfg class, `_create_sppnet`, `default_cfgs`, one `@register_model`
function per net. The contract's fields come from `delving.models.contract`; delving's own commands build the
same nets without timm (`delving.models.build`), and tests/test_timm.py checks that both agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from timm.models import PretrainedCfg, build_model_with_cfg, generate_default_cfgs, register_model

from delving.models.contract import MODEL_NAMES, TIMM_PREFIX, contract_overlay, paper_contract
from delving.models.specs import NET_SPECS
from delving.models.sppnet import SPPNet
from delving.paper import PAPER_MEAN_RGB

__all__ = ["SPPNetCfg"]

_WEIGHT_SOURCES = ("url", "file", "state_dict", "hf_hub_id")


@dataclass
class SPPNetCfg(PretrainedCfg):
    """timm's pretrained cfg plus delving's contract fields (timm's tools read the others and skip these)."""

    normalize: str = "mean"  # "mean": 0-255 pixels minus pixel_mean; "mean_std": then divided by pixel_std
    pixel_mean: tuple[float, ...] = PAPER_MEAN_RGB
    pixel_std: tuple[float, ...] | None = None
    test_scales: tuple[int, ...] = (256,)  # shorter sides in paper pixels (for a 224 crop)
    protocol: str = "dense"  # a delving.evaluation.config.Protocol value


def _as_cfg(cfg: Mapping[str, Any]) -> SPPNetCfg:
    known = {f.name for f in fields(SPPNetCfg)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"pretrained_cfg has keys that neither timm nor delving knows: {unknown}")
    return SPPNetCfg(**cfg)


def _create_sppnet(variant: str, pretrained: bool = False, **kwargs: Any) -> SPPNet:
    """Builds through timm's `build_model_with_cfg` (pretrained cfg, traits, `features_only` wrapping).

    Maps timm's keywords to the net's (`drop_rate` is `dropout`); a net without weights gets a cfg that
    describes it as built (its input size and class count).
    """
    name = variant.removeprefix(TIMM_PREFIX)
    spec = NET_SPECS[name]
    if "drop_rate" in kwargs:
        if "dropout" in kwargs:
            raise ValueError("give drop_rate (timm's name) or dropout (delving's), not both")
        kwargs["dropout"] = kwargs.pop("drop_rate")
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    if isinstance(pretrained_cfg, Mapping):
        pretrained_cfg = _as_cfg(pretrained_cfg)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    has_source = any(overlay.get(key) for key in _WEIGHT_SOURCES) or any(
        getattr(pretrained_cfg, key, None) for key in _WEIGHT_SOURCES
    )
    if pretrained and not has_source:
        raise ValueError(
            f"{variant} has no released weights: train it with delving-train, then load a checkpoint "
            "with pretrained=False, checkpoint_path=... (or pretrained_cfg_overlay=dict(file=...))"
        )
    shape = {key: kwargs[key] for key in ("input_size", "num_classes") if key in kwargs}
    if pretrained:
        shape.pop("num_classes", None)  # released weights keep their cfg's class count
    for key, value in contract_overlay(shape).items():
        overlay.setdefault(key, value)
    spp_levels = kwargs.pop("spp_levels", None) or spec.spp_levels
    model = build_model_with_cfg(
        SPPNet,
        variant,
        pretrained,
        pretrained_cfg=pretrained_cfg,
        pretrained_cfg_overlay=overlay,
        feature_cfg={"flatten_sequential": True, "out_indices": tuple(range(len(spec.plan)))},
        plan=spec.plan,
        spp_levels=spp_levels,
        **kwargs,
    )
    if isinstance(model, SPPNet):
        model.model_name = name
    return model


# Every net registered with the paper's contract.
default_cfgs = generate_default_cfgs(
    {TIMM_PREFIX + name: SPPNetCfg(**paper_contract(name)) for name in MODEL_NAMES}
)


@register_model
def delving_model_a(pretrained: bool = False, **kwargs: Any) -> SPPNet:
    """Table 3's model A: 7x7/2 stem, 3 stages of 5 3x3 convs (256, 512, 512), SPP, 19 layers."""
    return _create_sppnet("delving_model_a", pretrained, **kwargs)


@register_model
def delving_model_b(pretrained: bool = False, **kwargs: Any) -> SPPNet:
    """Table 3's model B: model A with 6 convs per stage, 22 layers."""
    return _create_sppnet("delving_model_b", pretrained, **kwargs)


@register_model
def delving_model_c(pretrained: bool = False, **kwargs: Any) -> SPPNet:
    """Table 3's model C: model B with wider stages (384, 768, 896), 22 layers."""
    return _create_sppnet("delving_model_c", pretrained, **kwargs)


@register_model
def delving_vgg19(pretrained: bool = False, **kwargs: Any) -> SPPNet:
    """Table 3's reproduced VGG-19, with SPP before fc1."""
    return _create_sppnet("delving_vgg19", pretrained, **kwargs)


@register_model
def delving_net14(pretrained: bool = False, **kwargs: Any) -> SPPNet:
    """Table 1's 14-layer net: 7x7/2 stem, 2x2 convs (4 x 128, 6 x 256), SPP {6, 3, 2, 1}."""
    return _create_sppnet("delving_net14", pretrained, **kwargs)


@register_model
def delving_net30(pretrained: bool = False, **kwargs: Any) -> SPPNet:
    """Fig. 3's 30-layer net: the 14-layer net with 16 more 2x2/256 convs in its last stage."""
    return _create_sppnet("delving_net30", pretrained, **kwargs)
