"""The paper's nets, activations, initializations and SPP.

The names below are imported on first use (PEP 562), so `import delving.models.config` (the entry points'
schemas) does not pull in torch; delving builds its nets without timm (`build.py`), and registers them in timm
whenever timm is imported (see delving/__init__.py).
"""

from __future__ import annotations

from delving._lazy import lazy_exports

_EXPORTS = {
    "Activation": "delving.models.config",
    "make_activation": "delving.models.activations",
    "MODEL_NAMES": "delving.models.contract",
    "TIMM_MODEL_NAMES": "delving.models.contract",
    "SPPNetCfg": "delving.models.factory",
    "build_model": "delving.models.build",
    "create_net": "delving.models.build",
    "input_normalization": "delving.models.contract",
    "InitScheme": "delving.models.config",
    "conv_init_std": "delving.models.init",
    "param_groups": "delving.models.params",
    "SpatialPyramidPool": "delving.models.spp",
    "NET_SPECS": "delving.models.specs",
    "NetSpec": "delving.models.specs",
    "SPPNet": "delving.models.sppnet",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
