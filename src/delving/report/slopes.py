"""Learned PReLU slopes (Table 1, Fig. 4 style): per layer over seeds beside the paper's, and during training."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from delving.paper import TABLE1_SLOPES
from delving.report.evidence import replicate_groups
from delving.report.plots import new_figure
from delving.report.runs import Run
from delving.report.section import Section, act_name
from delving.report.stats import Estimate, seed_estimate


def _layer_slopes(group: list[Run], layer: str) -> Estimate | None:
    """The layer's mean learned slope over the replicates (one number per seed: its channels' mean)."""
    values = [s.mean for run in group for s in run.slopes if s.layer == layer]
    return seed_estimate(np.array(values)) if len(values) == len(group) else None


def _slopes_figure(title: str, runs: list[Run]) -> Figure:
    """Per layer: the mean slope with error bars (over seeds: the 95 % interval; one channel-wise run: the
    spread of its channels), Table 1's values for net14."""
    fig, (ax,) = new_figure(1, 1, width=9, height=4)
    layers = [s.layer for s in runs[0].slopes]
    positions = range(len(layers))
    for group in replicate_groups(runs):
        run = group[0]
        label = f"ours: {act_name(run)}"
        estimates = [_layer_slopes(group, layer) for layer in layers]
        means = [e.mean if e else math.nan for e in estimates]
        if len(group) > 1:
            errors = [
                [e.mean - e.low if e else 0.0 for e in estimates],
                [e.high - e.mean if e else 0.0 for e in estimates],
            ]
            label += f" (mean of {len(group)} seeds, 95 % interval)"
            ax.errorbar(positions, means, yerr=errors, marker="o", capsize=3, label=label)
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
            )
        else:
            ax.plot(positions, means, marker="s", label=label)
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
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _slope_history_figure(run: Run) -> Figure | None:
    """The per-layer mean slope over training, from metrics.jsonl: every layer starts at 0.25."""
    trains = [r for r in run.of_type("train") if any(k.startswith("prelu_slope/") for k in r)]
    if not trains:
        return None
    fig, (ax,) = new_figure(1, 1, width=7, height=4)
    keys = [k for k in trains[0] if k.startswith("prelu_slope/")]
    per_epoch = run.steps_per_epoch
    for key in keys:
        ax.plot([r["step"] / per_epoch for r in trains], [r[key] for r in trains], label=key.split("/", 1)[1])
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean slope a of the layer")
    ax.set_title(f"{run.title}: PReLU slopes during training")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
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
        wise = next((r for r in members if any(s.count > 1 for s in r.slopes)), members[0])
        history = _slope_history_figure(wise)
        if history is not None:
            section.figures[f"{study}_slope_history.png"] = history
            section.lines += [f"![{study} slopes during training]({study}_slope_history.png)", ""]
    return section
