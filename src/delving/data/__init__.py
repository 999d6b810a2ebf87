"""Data: the data sets (synthetic default, ImageNet/folder layout, WebDataset shards), the paper's transforms,
and loaders whose order and augmentation depend only on (seed, epoch)."""

from delving.data.config import DataConfig, DatasetKind, Normalize
from delving.data.decode import BadImageError, TooManyBadImagesError, decode_image
from delving.data.loaders import EvalLoader, TrainLoader
from delving.data.transforms import normalize_tensor, resize_shorter, to_model_input

__all__ = [
    "BadImageError",
    "DataConfig",
    "DatasetKind",
    "EvalLoader",
    "Normalize",
    "TooManyBadImagesError",
    "TrainLoader",
    "decode_image",
    "normalize_tensor",
    "resize_shorter",
    "to_model_input",
]
