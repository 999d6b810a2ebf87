"""The paper's Sec. 2.2 analysis on any net at initialization: how the response and gradient scales
change with depth.

For every conv and fc layer it measures the std of the layer's response y_l in a forward pass of a
random input, and the std of the gradient dE/dy_l in a backward pass of a random unit-variance
gradient from the output. Eq. (10)/(14) keep these constant with depth; with Xavier's n Var[w] = 1 on
ReLU nets each layer halves the variance, so a 27-conv net loses about 2^-13 of its signal (Fig. 3).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from delving.models import InitScheme, build_model, conv_init_std
from delving.models.config import ModelName

# `inits` entry that keeps a timm net's own initialization.
OWN_INIT = "own"


def _ratio(num: float, den: float) -> float:
    # A zero std happens (timm's zero-initialized last BN of a residual branch stops the gradient there).
    return num / den if den > 0 else math.nan


@dataclass
class LayerStats:
    name: str
    kind: str  # conv | fc
    forward_std: float  # std of the layer's response y_l
    backward_std: float  # std of dE/dy_l


@dataclass
class InitReport:
    model: str
    init: str
    input_shape: list[int]
    layers: list[LayerStats] = field(default_factory=list)

    def _ends(self) -> tuple[LayerStats, LayerStats]:
        """First and last conv layer (all layers where the net has no conv)."""
        convs = [layer for layer in self.layers if layer.kind == "conv"] or self.layers
        return convs[0], convs[-1]

    @property
    def forward_gain(self) -> float:
        """Response std of the last conv over the first: 1 is the ideal of Eqs. (10)/(14)."""
        first, last = self._ends()
        return _ratio(last.forward_std, first.forward_std)

    @property
    def backward_gain(self) -> float:
        """Gradient std at the first conv over the last (the backward signal travels down): ideally 1."""
        first, last = self._ends()
        return _ratio(first.backward_std, last.backward_std)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "forward_gain_last_over_first": self.forward_gain,
            "backward_gain_first_over_last": self.backward_gain,
        }


def build_net(model_cfg: Any, init: str, timm_name: str | None) -> nn.Module:
    """A delving net built with `init`, or a timm net with its own init (`own`) or its convs re-initialized."""
    if timm_name is None:
        return build_model({**dict(model_cfg), "init": init})
    import timm

    net = timm.create_model(timm_name, pretrained=False)
    if init != OWN_INIT:
        scheme = InitScheme(init)
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.normal_(module.weight, 0.0, conv_init_std(module.weight.shape, scheme))
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
    return net


def default_input_size(net: nn.Module) -> int:
    size = getattr(net, "input_size", None)
    if isinstance(size, int):
        return size
    return int(getattr(net, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1])


def measure(net: nn.Module, x: torch.Tensor, grad_seed: int = 0) -> list[LayerStats]:
    """Forward and backward stds of every Conv2d / Linear response, in forward order (eval mode: no dropout)."""
    net.eval()
    # In-place activations would overwrite the responses whose gradients we hook.
    for module in net.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False
    records: dict[str, dict[str, Any]] = {}

    def hook(name: str, kind: str):
        def forward_hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            record = records.setdefault(name, {"kind": kind})
            record["forward_std"] = output.detach().float().std().item()
            if output.requires_grad:
                output.register_hook(lambda g: record.__setitem__("backward_std", g.float().std().item()))

        return forward_hook

    handles = [
        module.register_forward_hook(hook(name, "conv" if isinstance(module, nn.Conv2d) else "fc"))
        for name, module in net.named_modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    try:
        output = net(x)
        generator = torch.Generator().manual_seed(grad_seed)
        output.backward(torch.randn(output.shape, generator=generator))
    finally:
        for handle in handles:
            handle.remove()
        net.zero_grad(set_to_none=True)
    return [
        LayerStats(name, r["kind"], r["forward_std"], r.get("backward_std", float("nan")))
        for name, r in records.items()
    ]


def init_check(
    model_cfg: Any,
    inits: Sequence[str],
    timm_name: str | None = None,
    batch_size: int = 2,
    input_size: int | None = None,
    input_std: float = 1.0,
    seed: int = 0,
) -> list[InitReport]:
    """One report per init, each on the same random input (drawn first, from `seed`)."""
    reports = []
    for init in inits:
        torch.manual_seed(seed)
        if timm_name is None:
            # The input first, then the weights: the order of the models' depth test.
            size = input_size or int(model_cfg["input_size"])
            x = torch.randn(batch_size, 3, size, size) * input_std
            net = build_net(model_cfg, init, timm_name)
        else:
            net = build_net(model_cfg, init, timm_name)
            size = input_size or default_input_size(net)
            x = torch.randn(batch_size, 3, size, size) * input_std
        name = timm_name or ModelName(model_cfg["name"]).value
        reports.append(InitReport(name, str(init), list(x.shape), measure(net, x, grad_seed=seed)))
    return reports


def fmt_stat(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def render_markdown(reports: Sequence[InitReport], command: str | None = None) -> str:
    lines = ["# Initialization check (Sec. 2.2)", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    first = reports[0]
    lines += [
        f"Model `{first.model}`, input {first.input_shape} (random normal), eval mode. Forward: std of each "
        "layer's response y_l. Backward: std of dE/dy_l for a random unit-variance gradient at the output. "
        "Gains compare the first and the last conv layer (the first and last layer where there is no conv): "
        "1 keeps the scale (Eqs. 10 and 14); ReLU with Xavier's n·Var[w] = 1 halves the variance per layer. "
        "Pools change the scales too, which the paper's analysis leaves out: a k×k/k max pool passes the "
        "gradient to one of k² inputs (gradient std / k).",
        "",
        "| init | layers | forward gain (last / first) | backward gain (first / last) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r.init} | {len(r.layers)} | {fmt_stat(r.forward_gain)} | {fmt_stat(r.backward_gain)} |"
        for r in reports
    ]
    header = "| layer | kind | " + " | ".join(f"{r.init} fwd std | {r.init} bwd std" for r in reports) + " |"
    lines += ["", "## Per layer", "", header, "|---|---|" + "---|---|" * len(reports)]
    for index, layer in enumerate(first.layers):
        cells = []
        for report in reports:
            other = report.layers[index]
            cells += [fmt_stat(other.forward_std), fmt_stat(other.backward_std)]
        lines.append(f"| {layer.name} | {layer.kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(reports: Sequence[InitReport]):
    """Two panels (forward response std, backward gradient std) per layer, log scale, one line per init."""
    from delving.report.plots import new_figure

    fig, axes = new_figure(1, 2, width=11, height=4)
    for report in reports:
        depth = range(1, len(report.layers) + 1)
        axes[0].semilogy(depth, [s.forward_std for s in report.layers], marker=".", label=report.init)
        axes[1].semilogy(depth, [s.backward_std for s in report.layers], marker=".", label=report.init)
    model = reports[0].model
    axes[0].set_title(f"{model}: forward response std at init")
    axes[1].set_title(f"{model}: backward gradient std at init")
    for ax, what in zip(axes, ("std of response y_l", "std of dE/dy_l"), strict=True):
        ax.set_xlabel("layer (conv and fc, input to output)")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    return fig


def write_outputs(reports: Sequence[InitReport], output_dir: str | Path, command: str | None = None) -> Path:
    """init_check.md, init_check.json and init_check.png in `output_dir`; returns the markdown path."""
    from delving.report.plots import save_figure

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    markdown = output_dir / "init_check.md"
    markdown.write_text(render_markdown(reports, command) + "\n![init check](init_check.png)\n")
    (output_dir / "init_check.json").write_text(json.dumps([r.to_dict() for r in reports], indent=1) + "\n")
    save_figure(plot(reports), output_dir / "init_check.png")
    return markdown
