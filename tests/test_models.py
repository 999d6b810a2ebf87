"""The paper's nets against Table 3, PReLU against Eqs. 1-3, init against Eqs. 10/14, SPP against SPP-net."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from delving.models import (
    MODEL_NAMES,
    NET_SPECS,
    SpatialPyramidPool,
    build_model,
    create_net,
    make_activation,
    param_groups,
)

# Table 3's complexity row (conv multiply-adds, x 1e10) and the depth of each net (conv + fc layers).
TABLE3_CONV_MACS = {"model_a": 1.90, "model_b": 2.32, "model_c": 5.30, "vgg19": 1.96}
TABLE3_PARAMS_M = {"model_a": 178.0, "model_b": 183.3, "model_c": 330.6}
DEPTH = {"model_a": 19, "model_b": 22, "model_c": 22, "vgg19": 19, "net14": 14, "net30": 30}


def _meta_net(name: str, **options) -> nn.Module:
    with torch.device("meta"):
        return create_net(name, **options)


def _conv_macs(model: nn.Module, size: int = 224) -> float:
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, 3, size, size, device="meta"))
    flops = counter.get_flop_counts()["Global"]
    return sum(count for op, count in flops.items() if "convolution" in str(op)) / 2  # FLOPs = 2 x MACs


@pytest.mark.parametrize("name", TABLE3_CONV_MACS)
def test_conv_multiply_adds_match_table3(name: str) -> None:
    macs = _conv_macs(_meta_net(name))
    assert macs / 1e10 == pytest.approx(TABLE3_CONV_MACS[name], rel=0.01)


@pytest.mark.parametrize("act", ["relu", "prelu"])
@pytest.mark.parametrize("name", TABLE3_PARAMS_M)
def test_parameter_counts_match_table3(name: str, act: str) -> None:
    count = sum(p.numel() for p in _meta_net(name, act=act).parameters())
    assert count / 1e6 == pytest.approx(TABLE3_PARAMS_M[name], abs=0.1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_depth_and_feature_map_sizes(name: str) -> None:
    net = _meta_net(name)
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert len(layers) == DEPTH[name]
    # A/B/C/VGG-19 end on a 14x14 map at 224 (Table 3); the 2x2-conv nets on 18x18 (alternating pad).
    assert net.map_size == (18 if name.startswith("net") else 14)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_net_spec_agrees_with_the_net(name: str) -> None:
    spec, net = NET_SPECS[name], _meta_net(name)
    assert spec.map_size(224) == net.map_size and net.spp.levels == spec.spp_levels
    first = next(n for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    assert spec.first_conv == first == ("features.conv1_1" if name == "vgg19" else "features.conv1")
    # feature_info: one entry per stage, at its last activation, with the channels and stride there.
    assert len(net.feature_info) == len(spec.plan)
    for info in net.feature_info:
        act = net.get_submodule(info["module"])
        assert isinstance(act, nn.PReLU) and act.num_parameters == info["num_chs"]
    assert net.feature_info[-1]["reduction"] == net.feature_stride == 224 // net.map_size


def test_net_spec_refuses_an_input_too_small() -> None:
    with pytest.raises(ValueError, match=r"do not fit a 4x4"):
        NET_SPECS["model_a"].map_size(64)  # the 7x7 level
    assert NET_SPECS["model_a"].map_size(64, [2, 1]) == 4
    with pytest.raises(ValueError, match="too small"):
        NET_SPECS["net14"].map_size(8)


def test_prelu_slope_counts_match_the_paper() -> None:
    # Sec. 1.1: channel-wise slopes incl. fc1/fc2 (A 14,688); Table 1's net: 13 shared slopes (11 conv + 2 fc).
    slopes = sum(
        m.weight.numel() for m in _meta_net("model_a", act="prelu").modules() if isinstance(m, nn.PReLU)
    )
    assert slopes == 14_688
    shared = [m for m in _meta_net("net14", act="prelu_shared").modules() if isinstance(m, nn.PReLU)]
    assert len(shared) == 13 and all(m.weight.numel() == 1 for m in shared)


@pytest.mark.parametrize("shape", [(4, 6, 5, 5), (8, 6)])
@pytest.mark.parametrize("kind", ["prelu", "prelu_shared"])
def test_prelu_matches_equations_1_to_3(kind: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    prelu = make_activation(kind, num_channels=6)
    with torch.no_grad():
        prelu.weight.uniform_(-0.5, 1.5)  # any slope, incl. negative and > 1 (no constraint, Sec. 2.1)
    y = torch.randn(shape, requires_grad=True)
    upstream = torch.randn(shape)
    out = prelu(y)
    (out * upstream).sum().backward()

    a = prelu.weight.detach()
    a_full = a.view(1, -1, *([1] * (len(shape) - 2))) if a.numel() > 1 else a
    positive = y.detach() > 0
    # Eq. 1: f(y) = y if y > 0, a * y otherwise.
    torch.testing.assert_close(out, torch.where(positive, y.detach(), a_full * y.detach()))
    # Input gradient: 1 where y > 0, a elsewhere.
    torch.testing.assert_close(y.grad, upstream * torch.where(positive, torch.ones_like(a_full), a_full))
    # Eqs. 2-3: dE/da_i = sum over positions (and the batch) of upstream * y where y <= 0.
    contribution = torch.where(positive, torch.zeros(()), y.detach()) * upstream
    reduce_dims = [d for d in range(len(shape)) if d != 1] if kind == "prelu" else list(range(len(shape)))
    torch.testing.assert_close(prelu.weight.grad, contribution.sum(reduce_dims).reshape(a.shape))


def _conv_layers(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.features if isinstance(m, nn.Conv2d)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "init", "prelu_factor"),
    [
        ("model_a", "he_fan_out", False),
        ("model_a", "he_fan_in", False),
        ("model_a", "xavier", False),
        ("model_a", "he_fan_out", True),
        ("model_c", "he_fan_out", False),
    ],
)
def test_init_std_matches_the_formula(name: str, init: str, prelu_factor: bool) -> None:
    torch.manual_seed(0)
    net = create_net(name, act="prelu", init=init, init_prelu_factor=prelu_factor)
    factor = 1 + 0.25**2 if prelu_factor else 1.0
    for conv in _conv_layers(net):
        d, c, k, _ = conv.weight.shape
        n = k * k * (c if init == "he_fan_in" else d)
        expected = math.sqrt(1 / n) if init == "xavier" else math.sqrt(2 / (factor * n))
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.02), conv
        assert conv.weight.mean().abs().item() < 0.05 * expected
        assert torch.count_nonzero(conv.bias) == 0
    for fc, std in zip((net.head.fc1, net.head.fc2, net.head.fc3), (0.01, 0.01, 0.001), strict=True):
        assert fc.weight.std().item() == pytest.approx(std, rel=0.02)
        assert torch.count_nonzero(fc.bias) == 0
    slopes = torch.cat([m.weight for m in net.modules() if isinstance(m, nn.PReLU)])
    assert torch.all(slopes == 0.25)


@pytest.mark.slow
def test_table3_he_stds_of_model_c() -> None:
    # Paper Sec. 3.2: sigma = sqrt(2 / (k^2 d)) = 0.0206, 0.0241, 0.0170, 0.0157 for conv1 and the C stages.
    expected = {"conv1": 0.0206, "conv2_1": 0.0241, "conv3_1": 0.0170, "conv4_1": 0.0157}
    torch.manual_seed(0)
    net = create_net("model_c", act="relu")
    for layer, std in expected.items():
        assert getattr(net.features, layer).weight.std().item() == pytest.approx(std, rel=0.02)


def _conv_response_stds(net: nn.Module, x: torch.Tensor) -> list[float]:
    stds: list[float] = []
    hooks = [c.register_forward_hook(lambda m, i, o: stds.append(o.std().item())) for c in _conv_layers(net)]
    with torch.no_grad():
        net.forward_features(x)
    for hook in hooks:
        hook.remove()
    return stds


@pytest.mark.slow
def test_depth_argument_on_the_30_layer_net() -> None:
    """Sec. 2.2 / Fig. 3: He init keeps the response scale over 27 conv layers, Xavier shrinks it."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    he = _conv_response_stds(create_net("net30", act="relu", init="he_fan_out").eval(), x)
    xavier = _conv_response_stds(create_net("net30", act="relu", init="xavier").eval(), x)
    assert len(he) == len(xavier) == 27
    assert 1 / 4 < he[-1] / he[0] < 4
    assert xavier[-1] / xavier[0] < 1 / 100


def test_spp_uses_spp_net_windows_not_adaptive_pooling() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 14, 14)
    level3 = SpatialPyramidPool([3])(x).view(2, 5, 3, 3)
    for p, (r0, r1) in enumerate([(0, 5), (4, 9), (8, 13)]):
        for q, (c0, c1) in enumerate([(0, 5), (4, 9), (8, 13)]):
            torch.testing.assert_close(level3[:, :, p, q], x[:, :, r0:r1, c0:c1].amax(dim=(-2, -1)))
    # Row/column 13 is never read: a spike there changes nothing, unlike AdaptiveMaxPool2d's [9, 14) bins.
    spiked = x.clone()
    spiked[:, :, 13, :] = 100.0
    torch.testing.assert_close(SpatialPyramidPool([3])(spiked), SpatialPyramidPool([3])(x))
    assert nn.AdaptiveMaxPool2d(3)(spiked).amax() == 100.0


def test_spp_output_size_and_level_errors() -> None:
    spp = SpatialPyramidPool([7, 3, 2, 1])
    assert spp(torch.randn(1, 512, 14, 14)).shape == (1, 512 * 63)
    with pytest.raises(ValueError, match=r"do not fit a 5x5"):
        spp(torch.randn(1, 8, 5, 5))
    with pytest.raises(ValueError, match="spp_levels"):
        create_net("model_a", input_size=64)  # a 4x4 map cannot hold the 7x7 level


def test_dense_spp_equals_spp_of_each_window() -> None:
    torch.manual_seed(0)
    spp = SpatialPyramidPool([3, 2, 1])
    fmap = torch.randn(2, 4, 9, 11)
    dense = spp.dense(fmap, window=6)
    assert dense.shape == (2, 4, 6, 4 * 14)
    for i in range(4):
        for j in range(6):
            torch.testing.assert_close(dense[:, i, j], spp(fmap[:, :, i : i + 6, j : j + 6]))


def test_build_model_from_config_and_param_groups() -> None:
    cfg = {
        "name": "net14",
        "act": "prelu",
        "width": 0.125,
        "num_classes": 5,
        "input_size": 56,
        "spp_levels": [3, 1],
    }
    net = build_model(cfg)
    assert net.map_size == 4 and net.head.fc3.out_features == 5
    groups = {g["name"]: g for g in param_groups(net, weight_decay=5e-4)}
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for p in groups["weights"]["params"]}
    undecayed = {names[id(p)] for p in groups["biases_and_slopes"]["params"]}
    assert groups["weights"]["weight_decay"] == 5e-4 and groups["biases_and_slopes"]["weight_decay"] == 0.0
    assert all(n.endswith("weight") and "act" not in n for n in decayed)
    assert any("act" in n for n in undecayed) and all(n.endswith("bias") or "act" in n for n in undecayed)
    assert len(decayed) + len(undecayed) == len(names)
    assert len(decayed) == 14  # 11 convs + 3 fc


def test_forward_dense_whole_image_window_equals_forward() -> None:
    torch.manual_seed(0)
    net = create_net(
        "net14", act="prelu", width=0.125, num_classes=6, input_size=56, spp_levels=[3, 2, 1]
    ).eval()
    x = torch.randn(2, 3, 56, 56) * 50
    with torch.no_grad():
        dense = net.forward_dense(x)
        assert dense.shape == (2, 1, 1, 6)
        torch.testing.assert_close(dense[:, 0, 0], net(x), rtol=1e-4, atol=1e-4)
        assert net.forward_dense(torch.randn(1, 3, 80, 104)).shape == (1, 3, 5, 6)
