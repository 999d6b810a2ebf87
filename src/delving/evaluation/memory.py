"""The memory a test protocol needs at its largest scale, checked against the device before any image is read.

`eval.scales=[30000]` asked for GBs per image and died with a traceback or an out-of-memory kill. The dense
test runs the whole resized image through the net: its peak is found from the net's layer shapes at the
largest scale, for a square image (the least a shorter side of that length can be), the batch and its flips.
The crop protocols hold one resized image per decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from delving.errors import ConfigError
from delving.evaluation.config import EvalConfig, Protocol, effective_scales

GIB = 1 << 30
FLOAT_BYTES = 4
_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")
# The layers whose output has their input's shape (dropout and identity: the head in eval mode).
_SHAPE_KEEPING = (nn.ReLU, nn.PReLU, nn.LeakyReLU, nn.Dropout, nn.Identity)


def available_bytes(device: torch.device, total: bool = False) -> int | None:
    """Free memory on `device` (with `total`: all of it): the GPU's, or the host's within this cgroup's limit."""
    if device.type == "cuda":
        free_now, all_of_it = torch.cuda.mem_get_info(device)
        return int(all_of_it if total else free_now)
    found = []
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemTotal:" if total else "MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            used = 0 if total else int((_CGROUP / "memory.current").read_text())
            found.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def dense_peak_bytes(model_cfg: Any, side: int, images: int) -> int:
    """The most bytes two consecutive activations of the net hold at once (a layer's input and output), for
    `images` square inputs of `side` pixels, as `forward_dense` runs them.

    Walked over the net's own layers (built on the meta device: shapes only, nothing allocated) with their
    shape arithmetic, rather than a forward on the meta device: torch runs meta ops through its Python refs,
    which import its compiler, 3 s of every evaluation on 2 cores. `tests/test_preflight.py` checks the walk
    against that forward for every net and activation."""
    from delving.models import build_model

    with torch.device("meta"):
        net = build_model(model_cfg).eval()
    channels, height, width = net.in_chans, side, side
    peak = 0
    for layer in net.features:
        before = channels * height * width
        if isinstance(layer, nn.Conv2d | nn.MaxPool2d):
            height, width = (_out_size(layer, size, axis) for axis, size in enumerate((height, width)))
            channels = layer.out_channels if isinstance(layer, nn.Conv2d) else channels
        elif not isinstance(layer, _SHAPE_KEEPING):
            raise TypeError(f"dense_peak_bytes knows no shape rule for {type(layer).__name__}")
        peak = max(peak, before + channels * height * width)
    if height < net.map_size or width < net.map_size:
        raise ValueError(f"feature map {height}x{width} is smaller than the {net.map_size} px SPP window")
    # SPP takes the map in and gives every window's bins out: the rows the fc layers then run on.
    windows = (height - net.map_size + 1) * (width - net.map_size + 1)
    features = channels * net.spp.num_bins
    peak = max(peak, channels * height * width + windows * features)
    for layer in net.head:
        before = features
        if isinstance(layer, nn.Linear):
            features = layer.out_features
        elif not isinstance(layer, _SHAPE_KEEPING):
            raise TypeError(f"dense_peak_bytes knows no shape rule for {type(layer).__name__}")
        peak = max(peak, windows * (before + features))
    return peak * images * FLOAT_BYTES


def _out_size(layer: nn.Conv2d | nn.MaxPool2d, size: int, axis: int) -> int:
    def pick(value: int | tuple[int, ...]) -> int:
        return value[axis] if isinstance(value, tuple) else value

    if pick(layer.dilation) != 1 or (isinstance(layer, nn.MaxPool2d) and layer.ceil_mode):
        raise TypeError(f"dense_peak_bytes knows no shape rule for {layer}")
    return (size + 2 * pick(layer.padding) - pick(layer.kernel_size)) // pick(layer.stride) + 1


def check_eval_memory(
    eval_cfg: EvalConfig, model_cfg: Any, input_size: int, device: torch.device, later: bool = False
) -> None:
    """Refuses, in one line, scales whose largest needs more memory than `device` has free (call it after
    check_eval: the scales are valid). `model_cfg`: a ModelConfig or a checkpoint's model config dict.
    `later`: the evaluation runs after training (delving-train's final one): against all of the device's
    memory, as what is free at launch says little about then."""
    free = available_bytes(device, total=later)
    if free is None:
        return
    paper = max(eval_cfg.scales)
    side = effective_scales([paper], input_size)[0]
    image_bytes = 3 * side * side * FLOAT_BYTES  # one resized image, as a decoder holds it
    protocol = Protocol(eval_cfg.protocol)
    if protocol in (Protocol.dense, Protocol.multiscale):
        views = eval_cfg.batch_size * (2 if eval_cfg.flips else 1)
        per_image = dense_peak_bytes(model_cfg, side, 1) * (2 if eval_cfg.flips else 1) + image_bytes
        needed = dense_peak_bytes(model_cfg, side, views) + eval_cfg.batch_size * image_bytes
        what = f"a batch of eval.batch_size={eval_cfg.batch_size} images{' and their flips' if eval_cfg.flips else ''}"
    else:
        per_image = needed = image_bytes
        what = "one resized image"
    if needed <= free:
        return
    fits = int(free // per_image) if protocol in (Protocol.dense, Protocol.multiscale) else 0
    fix = (
        f"lower eval.batch_size to {fits} or the scale" if fits >= 1
        else f"even one image needs {per_image / GIB:.1f} GiB: lower the scale"
    )  # fmt: skip
    raise ConfigError(
        f"eval.scales={list(eval_cfg.scales)}: scale {paper} ({side} px shorter side for model.input_size="
        f"{input_size}) needs at least {needed / GIB:.1f} GiB for {what}, more than the {free / GIB:.1f} GiB "
        f"{'that' if later else 'free on'} {device}{' has' if later else ''}; {fix} (the paper's: 256, 384, 480)"
    )
