"""How a GPU does float32 math here: TF32 or IEEE fp32 (train.tf32, eval.tf32), and cuDNN's autotuning.

torch 2.14's own defaults mix the two: cuDNN convolutions in TF32 (10-bit mantissa on Ampere and later) but
matmuls (the fc layers) in IEEE fp32. delving sets both the same way, explicitly, through torch's
`fp32_precision` API (never the legacy `allow_tf32` flags: torch refuses to read those once the new API has set
conv and matmul apart). On a CPU none of this changes a bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def fp32_math() -> dict[str, str]:
    """What float32 convolutions and matmuls run as now on CUDA: 'tf32' or 'ieee' (torch's 'none': inherited)."""
    return {
        "conv": _resolved(torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.fp32_precision),
        "matmul": _resolved(torch.backends.cuda.matmul.fp32_precision, "none"),
    }


def _resolved(own: str, parent: str) -> str:
    if own != "none":
        return own
    if parent != "none":
        return parent
    top = torch.backends.fp32_precision
    return top if top != "none" else "ieee"


def set_tf32(enabled: bool) -> None:
    """float32 convolutions and matmuls in TF32 (`enabled`) or IEEE fp32, process-wide."""
    value = "tf32" if enabled else "ieee"
    torch.backends.cudnn.conv.fp32_precision = value
    torch.backends.cuda.matmul.fp32_precision = value


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """`set_tf32(enabled)` for the block, the previous settings after it."""
    conv, matmul = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    set_tf32(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = conv, matmul


@contextlib.contextmanager
def cudnn_autotuning(enabled: bool) -> Iterator[None]:
    """torch.backends.cudnn.benchmark for the block, the previous value after it (not cudnn.flags(): it reads
    the legacy TF32 flag, which torch refuses once `set_tf32` has set conv and matmul apart from RNNs)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
