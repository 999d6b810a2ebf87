"""The nets in timm: each with its test-time contract (a timm pretrained cfg), built by timm's builder.

The file follows timm's family layout: the cfg class, `_create_sppnet`, `_cfg`, `default_cfgs`, one
`@register_model` function per net, then delving's own entry points (`create_net`, `build_model`).

A net's pretrained cfg is its contract with whoever feeds it: the input it was trained on, in delving's
terms (0-255 pixels minus `pixel_mean`, divided by `pixel_std` only in `mean_std` mode) and in timm's
(`mean`/`std` on ToTensor's 0-1 scale: the mean colour / 255 and 1/255, so timm's
`resolve_data_config` + `create_transform` feed the net exactly), and how the paper tests it (the test
scales, the protocol). A checkpoint stores it (`delving.checkpoint`) and delving-eval reads it back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import OmegaConf
from timm.models import PretrainedCfg, build_model_with_cfg, generate_default_cfgs, register_model

from delving.models.config import ModelConfig
from delving.models.sppnet import NET_SPECS, SPPNet
from delving.paper import PAPER_INPUT_SIZE, PAPER_MEAN_RGB, PAPER_SCALES

__all__ = [
    "MODEL_NAMES",
    "PAPER_INPUT_SIZE",
    "PAPER_MEAN_RGB",
    "TIMM_MODEL_NAMES",
    "TIMM_PREFIX",
    "SPPNetCfg",
    "build_model",
    "center_crop_pct",
    "create_net",
    "input_normalization",
]

MODEL_NAMES = tuple(NET_SPECS)
TIMM_PREFIX = "delving_"
TIMM_MODEL_NAMES = tuple(TIMM_PREFIX + name for name in MODEL_NAMES)
_WEIGHT_SOURCES = ("url", "file", "state_dict", "hf_hub_id")


@dataclass
class SPPNetCfg(PretrainedCfg):
    """timm's pretrained cfg plus delving's contract fields (timm's tools read the others and skip these)."""

    normalize: str = "mean"  # "mean": 0-255 pixels minus pixel_mean; "mean_std": then divided by pixel_std
    pixel_mean: tuple[float, ...] = PAPER_MEAN_RGB
    pixel_std: tuple[float, ...] | None = None
    test_scales: tuple[int, ...] = (256,)  # shorter sides in paper pixels (for a 224 crop)
    protocol: str = "dense"  # a delving.evaluation.config.Protocol value


def input_normalization(
    normalize: str, pixel_mean: Sequence[float], pixel_std: Sequence[float] | None = None
) -> dict[str, Any]:
    """The cfg fields of one input normalisation, in delving's terms and in timm's.

    timm computes (pixel / 255 - mean) / std; with mean = pixel_mean / 255 and std = pixel_std / 255
    (1 / 255 when nothing is divided) that is delving's pixel - pixel_mean [/ pixel_std].
    """
    if normalize not in ("mean", "mean_std", "mean_image"):
        raise ValueError(f"normalize={normalize!r}: give 'mean', 'mean_std' or 'mean_image'")
    # mean_image: delving subtracts the training set's mean image (data.normalize=mean_image); timm can only
    # subtract a colour, so its fields hold the mean colour: the closest input timm's transforms can give.
    std = tuple(float(s) for s in pixel_std) if normalize == "mean_std" and pixel_std is not None else None
    if normalize == "mean_std" and std is None:
        raise ValueError("normalize='mean_std' needs pixel_std")
    return {
        "normalize": normalize,
        "pixel_mean": tuple(float(m) for m in pixel_mean),
        "pixel_std": std,
        "mean": tuple(float(m) / 255 for m in pixel_mean),
        "std": tuple(s / 255 for s in (std or (1.0,) * len(pixel_mean))),
    }


def center_crop_pct(input_size: int, test_scale: int = 256) -> float:
    """timm's crop_pct for delving's centre view: an `input_size` crop of the image resized to the shorter
    side `test_scale` (paper pixels, so round(test_scale * input_size / 224) of this net's). timm resizes
    to floor(input_size / crop_pct), so the float is nudged down until that floor is the shorter side."""
    shorter = round(test_scale * input_size / PAPER_INPUT_SIZE)
    pct = input_size / shorter
    while math.floor(input_size / pct) < shorter:
        pct = math.nextafter(pct, 0.0)
    return pct


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
    if "input_size" in kwargs:
        size = int(kwargs["input_size"])
        overlay.setdefault("input_size", (3, size, size))
        overlay.setdefault("crop_pct", center_crop_pct(size))
    if not pretrained and "num_classes" in kwargs:
        overlay.setdefault("num_classes", kwargs["num_classes"])
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


def _cfg(name: str, test_scales: tuple[int, ...], protocol: str, **kwargs: Any) -> SPPNetCfg:
    """The paper's input (the mean colour subtracted from 0-255 pixels, no std division), bilinear
    resizing, a 224 crop of the shorter side 256 (crop_pct 0.875), and how the paper tests the net."""
    return SPPNetCfg(
        input_size=(3, PAPER_INPUT_SIZE, PAPER_INPUT_SIZE),
        interpolation="bilinear",
        crop_pct=center_crop_pct(PAPER_INPUT_SIZE),
        crop_mode="center",
        num_classes=1000,
        first_conv=NET_SPECS[name].first_conv,
        classifier="head.fc3",
        paper_ids="arXiv:1502.01852",
        paper_name="Delving Deep into Rectifiers",
        test_scales=test_scales,
        protocol=protocol,
        **input_normalization("mean", PAPER_MEAN_RGB),
        **kwargs,
    )


# Tables 4 and 6 test A, B and C densely at three scales (and the reproduced VGG-19 like them);
# Table 2 tests the small nets with 10 views at 256.
_TABLE3_TEST = {"test_scales": PAPER_SCALES, "protocol": "multiscale"}
_TABLE2_TEST = {"test_scales": (256,), "protocol": "ten_view"}

default_cfgs = generate_default_cfgs(
    {
        "delving_model_a": _cfg("model_a", **_TABLE3_TEST),
        "delving_model_b": _cfg("model_b", **_TABLE3_TEST),
        "delving_model_c": _cfg("model_c", **_TABLE3_TEST),
        "delving_vgg19": _cfg("vgg19", **_TABLE3_TEST),
        "delving_net14": _cfg("net14", **_TABLE2_TEST),
        "delving_net30": _cfg("net30", **_TABLE2_TEST),
    }
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


def create_net(name: str, spp_levels: Sequence[int] | None = None, **options: Any) -> SPPNet:
    """The net `name` (one of MODEL_NAMES) with the paper's SPP levels unless `spp_levels` is given."""
    options = {key: value for key, value in options.items() if value is not None}  # None: the default
    if name not in NET_SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if spp_levels is not None:
        options["spp_levels"] = tuple(int(n) for n in spp_levels)
    return _create_sppnet(TIMM_PREFIX + name, **options)


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> SPPNet:
    """Build from a model config: the typed ModelConfig, a composed node of one, or its plain dict (a
    checkpoint's config["model"]); taken as the plain dict, enums as their names."""
    options: dict[str, Any] = OmegaConf.to_container(OmegaConf.create(cfg), enum_to_str=True)  # type: ignore[assignment]
    name = options.pop("name")
    if options.get("fc_init_std") is not None:
        options["fc_init_std"] = [float(s) for s in options["fc_init_std"]]
    return create_net(name, **options)
