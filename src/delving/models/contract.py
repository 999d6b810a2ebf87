"""A net's test-time contract, as the plain dict timm keeps as `model.pretrained_cfg` (no timm import here).

The contract is what a net says to whoever feeds it: the input it was trained on, in delving's terms
(0-255 pixels minus `pixel_mean`, divided by `pixel_std` only in `mean_std` mode) and in timm's (`mean`/`std`
on ToTensor's 0-1 scale: the mean colour / 255 and 1/255, so timm's `resolve_data_config` +
`create_transform` feed the net exactly), and how the paper tests it (the test scales, the protocol). A
checkpoint stores it (`delving.checkpoint`) and delving-eval reads it back.

delving's own commands build nets without timm (`delving.models.build`): importing timm costs seconds (it
imports torchvision and torch's compiler) on every launch. `delving.models.factory` registers the same nets
in timm from the same fields; tests/test_timm.py checks that both builders give the same net and contract.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from delving.models.specs import NET_SPECS
from delving.paper import PAPER_INPUT_SIZE, PAPER_MEAN_RGB, PAPER_SCALES

__all__ = [
    "MODEL_NAMES",
    "TIMM_MODEL_NAMES",
    "TIMM_PREFIX",
    "center_crop_pct",
    "contract_overlay",
    "input_normalization",
    "net_contract",
    "paper_contract",
]

MODEL_NAMES = tuple(NET_SPECS)
TIMM_PREFIX = "delving_"
TIMM_MODEL_NAMES = tuple(TIMM_PREFIX + name for name in MODEL_NAMES)

# Tables 4 and 6 test A, B and C densely at three scales (and the reproduced VGG-19 like them);
# Table 2 tests the small nets with 10 views at 256.
_TABLE3_TEST = {"test_scales": PAPER_SCALES, "protocol": "multiscale"}
_TABLE2_TEST = {"test_scales": (256,), "protocol": "ten_view"}
_PAPER_TESTS = {
    "model_a": _TABLE3_TEST,
    "model_b": _TABLE3_TEST,
    "model_c": _TABLE3_TEST,
    "vgg19": _TABLE3_TEST,
    "net14": _TABLE2_TEST,
    "net30": _TABLE2_TEST,
}

# The fields timm's PretrainedCfg fills in for every net (its defaults) and keeps in its dict even when None.
_TIMM_DEFAULTS = {"custom_load": False, "fixed_input_size": False, "pool_size": None}


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


def paper_contract(name: str) -> dict[str, Any]:
    """The registered contract of net `name`: the paper's input (the mean colour subtracted from 0-255
    pixels, no std division), bilinear resizing, a 224 crop of the shorter side 256 (crop_pct 0.875), and
    how the paper tests the net. None values are fields the net leaves unset."""
    return {
        "input_size": (3, PAPER_INPUT_SIZE, PAPER_INPUT_SIZE),
        "interpolation": "bilinear",
        "crop_pct": center_crop_pct(PAPER_INPUT_SIZE),
        "crop_mode": "center",
        "num_classes": 1000,
        "first_conv": NET_SPECS[name].first_conv,
        "classifier": "head.fc3",
        "paper_ids": "arXiv:1502.01852",
        "paper_name": "Delving Deep into Rectifiers",
        **_PAPER_TESTS[name],
        **input_normalization("mean", PAPER_MEAN_RGB),
    }


def contract_overlay(options: Mapping[str, Any]) -> dict[str, Any]:
    """The contract fields a net built with `options` changes: its input size (and the centre crop that
    goes with it) and its class count."""
    overlay: dict[str, Any] = {}
    if "input_size" in options:
        size = int(options["input_size"])
        overlay["input_size"] = (3, size, size)
        overlay["crop_pct"] = center_crop_pct(size)
    if "num_classes" in options:
        overlay["num_classes"] = options["num_classes"]
    return overlay


def net_contract(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The contract of net `name` built with `options`, as timm's builder leaves it on the net: the
    registered fields with the overlay, the variant as `architecture`, unset fields dropped."""
    contract = {"architecture": TIMM_PREFIX + name, **_TIMM_DEFAULTS}
    contract.update(paper_contract(name))
    contract.update(contract_overlay(options))
    return {key: value for key, value in contract.items() if value is not None or key in _TIMM_DEFAULTS}
