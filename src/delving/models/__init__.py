"""The paper's nets, activations, initializations and SPP. Importing it registers the nets in timm."""

from delving.models.activations import Activation, make_activation
from delving.models.factory import MODEL_NAMES, TIMM_MODEL_NAMES, build_model, create_net
from delving.models.init import InitScheme, conv_init_std
from delving.models.params import param_groups
from delving.models.spp import SpatialPyramidPool
from delving.models.sppnet import SPPNet

__all__ = [
    "MODEL_NAMES",
    "TIMM_MODEL_NAMES",
    "Activation",
    "InitScheme",
    "SPPNet",
    "SpatialPyramidPool",
    "build_model",
    "conv_init_std",
    "create_net",
    "make_activation",
    "param_groups",
]
