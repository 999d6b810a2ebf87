"""Spatial pyramid pooling with SPP-net's windows (window ceil(a/n), stride floor(a/n), max pooling).

This is not `AdaptiveMaxPool2d`: on a 14x14 map the 3x3 level pools rows [0,5), [4,9), [8,13)
and never reads row 13, exactly as SPP-net (and so the paper) does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from delving.models.specs import check_levels_fit, spp_window


class SpatialPyramidPool(nn.Module):
    """Max-pools an (N, C, H, W) map into C * sum(n^2) features, level by level, each flattened as (C, n, n)."""

    def __init__(self, levels: Sequence[int]) -> None:
        super().__init__()
        if not levels:
            raise ValueError("SPP needs at least one level")
        self.levels = tuple(int(n) for n in levels)

    @property
    def num_bins(self) -> int:
        return sum(n * n for n in self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        check_levels_fit(height, self.levels)
        check_levels_fit(width, self.levels)
        pooled = []
        for n in self.levels:
            (kh, sh), (kw, sw) = spp_window(height, n), spp_window(width, n)
            pooled.append(F.max_pool2d(x, (kh, kw), (sh, sw)).flatten(1))
        return torch.cat(pooled, dim=1)

    def dense(self, x: torch.Tensor, window: int) -> torch.Tensor:
        """SPP of every `window` x `window` sub-map at stride 1, as an (N, H', W', C * bins) tensor.

        Equals `forward` on each crop `x[..., i:i+window, j:j+window]`, but max-pools the whole map
        once per level and gathers the bins of all windows from it (the paper's dense test, Sec. 5).
        """
        check_levels_fit(window, self.levels)
        batch, channels, height, width = x.shape
        if height < window or width < window:
            raise ValueError(f"feature map {height}x{width} is smaller than the {window}x{window} SPP window")
        out_h, out_w = height - window + 1, width - window + 1
        pooled = []
        for n in self.levels:
            kernel, stride = spp_window(window, n)
            sliding = F.max_pool2d(x, kernel, stride=1)  # every possible bin, anchored at each position
            bins = torch.arange(n, device=x.device) * stride
            rows = (torch.arange(out_h, device=x.device)[:, None] + bins)[:, :, None, None]  # (H', n, 1, 1)
            cols = (torch.arange(out_w, device=x.device)[:, None] + bins)[None, None]  # (1, 1, W', n)
            gathered = sliding[:, :, rows, cols]  # (N, C, H', n, W', n)
            pooled.append(gathered.permute(0, 2, 4, 1, 3, 5).reshape(batch, out_h, out_w, channels * n * n))
        return torch.cat(pooled, dim=-1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
