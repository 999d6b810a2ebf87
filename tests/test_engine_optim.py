"""Caffe-form SGD against its formula, and the param groups that never decay slopes or biases."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from delving.engine.config import OptimConfig
from delving.engine.optim import CaffeSGD, build_optimizer
from delving.models import build_model


def test_caffe_momentum_matches_the_formula_and_torch_sgd_until_an_lr_drop() -> None:
    torch.manual_seed(0)
    w_caffe = torch.nn.Parameter(torch.randn(5))
    w_torch = torch.nn.Parameter(w_caffe.detach().clone())
    caffe = CaffeSGD([w_caffe], lr=0.1, momentum=0.9, weight_decay=0.01)
    plain = torch.optim.SGD([w_torch], lr=0.1, momentum=0.9, weight_decay=0.01)
    grads = [torch.randn(5) for _ in range(6)]
    velocity, w_ref = torch.zeros(5), w_caffe.detach().clone()
    for step, g in enumerate(grads):
        lr = 0.1 if step < 3 else 0.01
        for opt in (caffe, plain):
            opt.param_groups[0]["lr"] = lr
        w_caffe.grad, w_torch.grad = g.clone(), g.clone()
        caffe.step()
        plain.step()
        velocity = 0.9 * velocity + lr * (g + 0.01 * w_ref)
        w_ref = w_ref - velocity
        torch.testing.assert_close(w_caffe.detach(), w_ref)
        if step < 3:
            torch.testing.assert_close(w_caffe.detach(), w_torch.detach())
    assert not torch.allclose(w_caffe.detach(), w_torch.detach())  # the forms part at the LR drop


def test_optimizer_groups_never_decay_slopes_or_biases() -> None:
    net = build_model(
        {"name": "net14", "width": 0.0625, "num_classes": 4, "input_size": 24, "spp_levels": [2, 1]}
    )
    optimizer = build_optimizer(net, OptimConfig())
    slopes = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.PReLU)}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in slopes or p.ndim == 1:
                assert group["weight_decay"] == 0.0
            else:
                assert group["weight_decay"] == 5e-4


def test_bias_decay_decays_biases_but_never_slopes() -> None:
    net = build_model(
        {"name": "net14", "width": 0.0625, "num_classes": 4, "input_size": 24, "spp_levels": [2, 1]}
    )
    optimizer = build_optimizer(net, OptimConfig(bias_decay=True))
    slopes = {id(m.weight) for m in net.modules() if isinstance(m, torch.nn.PReLU)}
    biases = {id(p) for name, p in net.named_parameters() if name.endswith(".bias")}
    assert slopes and biases
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert group["weight_decay"] == (0.0 if id(p) in slopes else 5e-4)
            assert id(p) in slopes or id(p) in biases or p.ndim > 1


@pytest.mark.slow
def test_caffe_sgd_keeps_torchs_compiler_unimported_and_its_state_round_trips() -> None:
    """torch's Optimizer methods import torch's compiler (~2 s a launch) only to mark themselves untraceable;
    CaffeSGD calls the plain methods. Its state still saves and loads as torch's code does."""
    code = (
        "import sys, torch\n"
        "from delving.engine.optim import CaffeSGD\n"
        "net = torch.nn.Linear(3, 2)\n"
        "opt = CaffeSGD(net.parameters(), lr=0.1, weight_decay=1e-4)\n"
        "net(torch.ones(4, 3)).sum().backward(); opt.step(); opt.zero_grad()\n"
        "again = CaffeSGD(net.parameters(), lr=0.5); again.load_state_dict(opt.state_dict())\n"
        "same = all(torch.equal(again.state[p]['momentum_buffer'], opt.state[p]['momentum_buffer'])"
        " for p in net.parameters())\n"
        "print(same, again.param_groups[0]['lr'], net.weight.grad, 'torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True", "0.1", "None", "False"], result.stdout + result.stderr[-2000:]
