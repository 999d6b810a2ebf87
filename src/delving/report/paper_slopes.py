"""Table 1's learned slopes: the paper's one result that is neither a test error (those are in
delving.evaluation.paper_results) nor a curve (the fig* experiments' paper_reference describes those)."""

from __future__ import annotations

# Table 1 [P p.3]: learned PReLU slopes of the 14-layer net: layer -> (channel-shared, channel-wise mean).
# Layer names are ours (conv2_1 is the paper's conv21).
TABLE1_SLOPES: dict[str, tuple[float, float]] = {
    "conv1": (0.681, 0.596),
    "conv2_1": (0.103, 0.321),
    "conv2_2": (0.099, 0.204),
    "conv2_3": (0.228, 0.294),
    "conv2_4": (0.561, 0.464),
    "conv3_1": (0.126, 0.196),
    "conv3_2": (0.089, 0.152),
    "conv3_3": (0.124, 0.145),
    "conv3_4": (0.062, 0.124),
    "conv3_5": (0.008, 0.134),
    "conv3_6": (0.210, 0.198),
    "fc1": (0.063, 0.074),
    "fc2": (0.031, 0.075),
}
