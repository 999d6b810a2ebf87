"""Data: the data sets (synthetic default, ImageNet/folder layout, WebDataset shards, the hub's shards and
parquet read in place behind one reader seam, readers.COPIES), the paper's transforms, and loaders whose order
and augmentation depend only on (seed, epoch).

The names below are imported on first use (PEP 562), so `import delving.data.config` (every entry point's
schemas) does not pull in torchvision through the transforms.
"""

from __future__ import annotations

from delving._lazy import lazy_exports

_EXPORTS = {
    "DataConfig": "delving.data.config",
    "DatasetKind": "delving.data.config",
    "Normalize": "delving.data.config",
    "BadImageError": "delving.data.decode",
    "TooManyBadImagesError": "delving.data.decode",
    "decode_image": "delving.data.decode",
    "EvalLoader": "delving.data.loaders",
    "InputNormalizer": "delving.data.normalize",
    "TrainLoader": "delving.data.loaders",
    "open_split": "delving.data.readers",
    "normalize_tensor": "delving.data.transforms",
    "resize_shorter": "delving.data.transforms",
    "to_model_input": "delving.data.transforms",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
