"""delving-init-check: the Sec. 2.2 depth argument measured on any net, as the models' depth test measures it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from delving.models import create_net
from delving.report.init_check import init_check, measure, write_outputs


def _depth_test_stds(net: nn.Module, x: torch.Tensor) -> list[float]:
    """tests/test_models.py's measurement: each conv's output std in forward_features."""
    stds: list[float] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: stds.append(o.std().item()))
        for m in net.modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        net.forward_features(x)
    for hook in hooks:
        hook.remove()
    return stds


@pytest.mark.slow
def test_net30_ratios_match_the_depth_test() -> None:
    """The nets and input of test_depth_argument_on_the_30_layer_net: seed 0, randn(2, 3, 224, 224), He then Xavier."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    he = create_net("net30", act="relu", init="he_fan_out").eval()
    xavier = create_net("net30", act="relu", init="xavier").eval()
    expected = [_depth_test_stds(net, x) for net in (he, xavier)]
    stats = [measure(net, x) for net in (he, xavier)]
    for layers, stds in zip(stats, expected, strict=True):
        convs = [s for s in layers if s.kind == "conv"]
        assert len(convs) == 27 and len([s for s in layers if s.kind == "fc"]) == 3
        assert [s.forward_std for s in convs] == pytest.approx(stds, rel=1e-5)
    he_gain, xavier_gain = (e[-1] / e[0] for e in expected)
    assert 1 / 4 < he_gain < 4  # He keeps the scale over 27 layers
    assert xavier_gain == pytest.approx(1.6e-4, rel=0.1)  # Xavier loses ~2^-13 of it
    # Backward: Xavier's gradient at the first conv vanishes too; He's changes only by the pools' routing.
    he_back = stats[0][0].backward_std / [s for s in stats[0] if s.kind == "conv"][-1].backward_std
    xavier_back = stats[1][0].backward_std / [s for s in stats[1] if s.kind == "conv"][-1].backward_std
    assert xavier_back < 1e-3 < 0.05 < he_back


@pytest.mark.slow
def test_init_check_report_files_and_timm_nets(tmp_path: Path) -> None:
    small = {"name": "net14", "act": "relu", "width": 0.25, "input_size": 56, "spp_levels": [3, 2, 1]}
    reports = init_check(small, ["he_fan_out", "xavier"])
    assert reports[0].forward_gain > 10 * reports[1].forward_gain  # 11 convs: Xavier loses ~2^-5
    # timm's own init zero-initializes the last BN of each residual block: no gradient reaches the last conv.
    timm_reports = init_check({}, ["own", "he_fan_out"], timm_name="resnet18", input_size=64)
    assert timm_reports[0].model == "resnet18" and len(timm_reports[0].layers) == 21
    # Re-initializing the convs leaves the norms alone, so that stays true; the forward gains are measured.
    assert all(math.isnan(r.backward_gain) and 0 < r.forward_gain < 10 for r in timm_reports)
    markdown = write_outputs(reports, tmp_path, "delving-init-check model=net14")
    text = markdown.read_text()
    assert "forward gain (last / first)" in text and "| features.conv3_6 | conv |" in text
    assert (tmp_path / "init_check.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "init_check.json").read_text())
    assert [r["init"] for r in saved] == ["he_fan_out", "xavier"]
    assert saved[1]["forward_gain_last_over_first"] == pytest.approx(reports[1].forward_gain)
