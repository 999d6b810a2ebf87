"""delving's own builder: a net from its name or its model config, with its contract, without importing
timm (see `delving.models.contract` for why). `timm.create_model("delving_<name>", ...)` gives the same net
(tests/test_timm.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf

from delving.models.config import ModelConfig
from delving.models.contract import MODEL_NAMES, net_contract
from delving.models.specs import NET_SPECS
from delving.models.sppnet import SPPNet

__all__ = ["build_model", "create_net"]


def create_net(name: str, spp_levels: Sequence[int] | None = None, **options: Any) -> SPPNet:
    """The net `name` (one of MODEL_NAMES) with the paper's SPP levels unless `spp_levels` is given."""
    options = {key: value for key, value in options.items() if value is not None}  # None: the default
    if name not in NET_SPECS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    spec = NET_SPECS[name]
    given = dict(options, **({} if spp_levels is None else {"spp_levels": spp_levels}))
    contract = net_contract(name, options)
    options.setdefault("num_classes", contract["num_classes"])
    levels = tuple(int(n) for n in spp_levels) if spp_levels is not None else spec.spp_levels
    net = SPPNet(plan=spec.plan, spp_levels=levels, **options)
    # What timm's builder sets on a net it builds, so timm's tools treat both alike.
    net.pretrained_cfg = net.default_cfg = contract
    net.pretrained_model_args = {}
    net._model_args = given  # what timm.create_model records (timm's hub export rebuilds the net from it)
    net._traits = {"img_size": None, "fixed_input_size": False, "first_conv": contract["first_conv"]}
    net.model_name = name
    return net


def build_model(cfg: ModelConfig | Mapping[str, Any]) -> SPPNet:
    """Build from a model config: the typed ModelConfig, a composed node of one, or its plain dict (a
    checkpoint's config["model"]); taken as the plain dict, enums as their names."""
    options: dict[str, Any] = OmegaConf.to_container(OmegaConf.create(cfg), enum_to_str=True)  # type: ignore[assignment]
    name = options.pop("name")
    if options.get("fc_init_std") is not None:
        options["fc_init_std"] = [float(s) for s in options["fc_init_std"]]
    return create_net(name, **options)
