"""Learned PReLU slopes (Table 1, Fig. 4 style): per layer over seeds beside the paper's, and during training."""

from __future__ import annotations

import math
import textwrap

import numpy as np
from matplotlib.figure import Figure

from delving.paper import TABLE1_SLOPES
from delving.report.curves import EPOCH_AXIS, epoch_position
from delving.report.evidence import group_labels, replicate_groups, seed_of
from delving.report.plots import colours, legend_below, new_figure
from delving.report.runs import Run, layer_name
from delving.report.section import Section, act_name
from delving.report.stats import Estimate, seed_estimate


def _layer_slopes(group: list[Run], layer: str) -> Estimate | None:
    """The layer's mean learned slope over the replicates (one number per seed: its channels' mean)."""
    values = [s.mean for run in group for s in run.slopes if s.layer == layer]
    return seed_estimate(np.array(values)) if len(values) == len(group) else None


def _slopes_figure(title: str, runs: list[Run]) -> Figure:
    """Per layer: the mean slope with error bars (over seeds: the 95 % interval; one channel-wise run: the
    spread of its channels), Table 1's values for net14; a colour and a legend entry per setting."""
    fig, (ax,) = new_figure(1, 1, width=9, height=4)
    layers = [s.layer for s in runs[0].slopes]
    positions = range(len(layers))
    groups = replicate_groups(runs)
    for group, name, colour in zip(groups, group_labels(groups), colours(len(groups)), strict=True):
        run = group[0]
        label = f"{name}: {act_name(run)}"
        estimates = [_layer_slopes(group, layer) for layer in layers]
        means = [e.mean if e else math.nan for e in estimates]
        if len(group) > 1:
            errors = [
                [e.mean - e.low if e else 0.0 for e in estimates],
                [e.high - e.mean if e else 0.0 for e in estimates],
            ]
            label += f" (mean of {len(group)} seeds, 95 % interval)"
            ax.errorbar(positions, means, yerr=errors, marker="o", capsize=3, label=label, color=colour)
        elif any(s.count > 1 for s in run.slopes):
            stats = {s.layer: s for s in run.slopes}
            spreads = [stats[layer].std if layer in stats else 0.0 for layer in layers]
            ax.errorbar(
                positions,
                means,
                yerr=spreads,
                marker="o",
                capsize=3,
                label=label + " (mean ± std of channels)",
                color=colour,
            )
        else:
            ax.plot(positions, means, marker="s", label=label, color=colour)
    if all(layer in TABLE1_SLOPES for layer in layers):
        ax.plot(
            positions, [TABLE1_SLOPES[layer][0] for layer in layers], "k--", marker="x", label="paper: shared"
        )
        ax.plot(
            positions, [TABLE1_SLOPES[layer][1] for layer in layers], "k:", marker="+", label="paper: wise"
        )
    ax.axhline(0.25, color="grey", linewidth=0.8, label="init a = 0.25")
    ax.set_xticks(list(positions), layers, rotation=45, ha="right")
    ax.set_xlabel("layer")
    ax.set_ylabel("learned slope a")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    legend_below(fig, [ax])
    return fig


def _slope_history(run: Run) -> tuple[list[float], dict[str, list[float]]] | None:
    """The per-layer mean slope at each logged step (metrics.jsonl), by the paper's layer names."""
    trains = [r for r in run.of_type("train") if any(k.startswith("prelu_slope/") for k in r)]
    if not trains:
        return None
    per_epoch = run.steps_per_epoch
    xs = [epoch_position(r["step"], per_epoch) for r in trains]
    keys = [k for k in trains[0] if k.startswith("prelu_slope/")]
    return xs, {layer_name(k.split("/", 1)[1]): [r.get(k, math.nan) for r in trains] for k in keys}


HISTORY_COLUMNS = 3


def _slope_history_figure(study: str, runs: list[Run]) -> Figure | None:
    """The slopes during training (every layer starts at 0.25): a panel per setting, drawn from its first seed,
    a colour per layer, one legend of the layers below the panels."""
    groups = replicate_groups(runs)
    panels = [
        (group, label, history)
        for group, label in zip(groups, group_labels(groups), strict=True)
        if (history := _slope_history(group[0])) is not None
    ]
    if not panels:
        return None
    cols = min(HISTORY_COLUMNS, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = new_figure(rows, cols, width=4.6 * cols, height=3.2 * rows)
    layers = list(dict.fromkeys(layer for _, _, (_, series) in panels for layer in series))
    palette = dict(zip(layers, colours(len(layers)), strict=True))
    for ax, (group, label, (xs, series)) in zip(axes, panels, strict=False):
        for layer, values in series.items():
            ax.plot(xs, values, label=layer, color=palette[layer])
        seed = f"\nseed {seed_of(group[0])} of {len(group)}" if len(group) > 1 else ""
        ax.set_title(textwrap.fill(label, 48) + seed, fontsize=9)
        ax.set_xlabel(EPOCH_AXIS, fontsize=8)
        ax.set_ylabel("mean slope a of the layer", fontsize=8)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(f"{study}: PReLU slopes during training", fontsize=10)
    legend_below(fig, axes[: len(panels)], fontsize=7)
    return fig


def _slopes_table(runs: list[Run]) -> list[str]:
    """A column per setting: one run's mean ± std of channels [min, max], or over seeds the mean of the
    channels' means [95 % interval]."""
    groups = replicate_groups(runs)
    names = [s.layer for s in runs[0].slopes]
    with_paper = all(layer in TABLE1_SLOPES for layer in names)
    header = "| layer |" + (" paper shared | paper wise |" if with_paper else "")
    for group in groups:
        what = f"mean of {len(group)} seeds [95 % interval]" if len(group) > 1 else "mean ± std [min, max]"
        header += f" {group[0].setting_label if len(group) > 1 else group[0].title} {what} |"
    lines = [header, "|---|" + ("---|---|" if with_paper else "") + "---|" * len(groups)]
    for layer in names:
        cells = [f"| {layer} |"]
        if with_paper:
            cells.append(f" {TABLE1_SLOPES[layer][0]:.3f} | {TABLE1_SLOPES[layer][1]:.3f} |")
        for group in groups:
            cells.append(f" {_slope_cell(group, layer)} |")
        lines.append("".join(cells))
    return lines


def _slope_cell(group: list[Run], layer: str) -> str:
    if len(group) > 1:
        estimate = _layer_slopes(group, layer)
        return "–" if estimate is None else estimate.text(3)
    stat = next((s for s in group[0].slopes if s.layer == layer), None)
    if stat is None:
        return "–"
    if stat.count == 1:
        return f"{stat.mean:.3f} (shared)"
    return f"{stat.mean:.3f} ± {stat.std:.3f} [{stat.min:.2f}, {stat.max:.2f}]"


def slopes_section(groups: dict[str, list[Run]]) -> Section:
    """For each study with PReLU runs (groups: study -> its runs): the table, the plot, the slopes' history."""
    prelu_groups = {s: [r for r in m if r.slopes] for s, m in groups.items()}
    prelu_groups = {s: m for s, m in prelu_groups.items() if m}
    section = Section(["## Learned PReLU slopes (Table 1, Fig. 4 style)", ""] if prelu_groups else [])
    for study, members in prelu_groups.items():
        name = f"{study}_slopes.png"
        section.figures[name] = _slopes_figure(f"{study}: learned slopes per layer", members)
        section.lines += [f"### {study}", "", *_slopes_table(members), "", f"![{study} slopes]({name})", ""]
        history = _slope_history_figure(study, members)
        if history is not None:
            section.figures[f"{study}_slope_history.png"] = history
            section.lines += [f"![{study} slopes during training]({study}_slope_history.png)", ""]
    return section
