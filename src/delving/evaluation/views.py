"""The views each protocol cuts from an image resized to one test scale.

`center` and `ten_view` cut training-sized crops; `dense` and `multiscale` keep the whole image and
let the model slide its window over the last feature map. Flips are not views here: the evaluator
runs every batch and its mirror image together, which for the five crops gives AlexNet's ten views.
"""

from __future__ import annotations

import torch

from delving.data.transforms import center_origin
from delving.evaluation.config import Protocol

CROPS_PER_SCALE = {Protocol.center: 1, Protocol.ten_view: 5, Protocol.dense: 1, Protocol.multiscale: 1}


def crop_corners(protocol: Protocol, height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of each crop: the centre (rounded as torchvision does), then for ten_view the 4 corners."""
    if height < size or width < size:
        raise ValueError(f"a {height}x{width} image cannot hold a {size}x{size} crop")
    centre = center_origin(height, width, size)
    if protocol is Protocol.center:
        return [centre]
    if protocol is Protocol.ten_view:
        bottom, right = height - size, width - size
        return [centre, (0, 0), (0, right), (bottom, 0), (bottom, right)]
    raise ValueError(f"protocol {protocol.value} does not crop")


def image_views(image: torch.Tensor, protocol: Protocol, size: int) -> list[torch.Tensor]:
    """The (C, h, w) inputs the model runs for one resized (C, H, W) image at one scale, before flips."""
    if protocol in (Protocol.dense, Protocol.multiscale):
        return [image]
    height, width = image.shape[-2:]
    return [
        image[:, top : top + size, left : left + size]
        for top, left in crop_corners(protocol, height, width, size)
    ]
