"""Training curves: the loss and the validation error per epoch, over seeds, one figure per study."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from delving.report.evidence import group_labels, replicate_groups
from delving.report.plots import colours, legend_below, new_figure
from delving.report.runs import Run
from delving.report.section import Section
from delving.report.stats import Estimate, seed_estimate

# The x-axis of every per-epoch plot: epoch e is the logs' "epoch e" (validated at its end; its training steps
# lie in [e, e + 1)).
EPOCH_AXIS = "epoch (from 0, as the logs count)"


def _val_curve(group: list[Run], key: str = "val_top1_error") -> tuple[list[int], list[Estimate]]:
    """Epochs (0-based, as logged) that every replicate validated at, and the error there over the seeds."""
    curves = [{v["epoch"]: v[key] for v in run.of_type("val") if v.get(key) is not None} for run in group]
    epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return epochs, [seed_estimate(np.array([c[e] for c in curves])) for e in epochs]


def plot_val_curve(ax: Axes, group: list[Run], label: str, **style: Any) -> None:
    """The mean over seeds with its 95 % interval as error bars (a plain line for one seed)."""
    epochs, estimates = _val_curve(group)
    means = [e.mean for e in estimates]
    if len(group) > 1:
        errors = [[e.mean - e.low for e in estimates], [e.high - e.mean for e in estimates]]
        ax.errorbar(epochs, means, yerr=errors, capsize=2, label=f"{label} ({len(group)} seeds)", **style)
    else:
        ax.plot(epochs, means, label=label, **style)


def interval_note(groups: list[list[Run]]) -> str:
    """What the error bars of a plot of these replicate groups are, or that a group of one seed has none."""
    seeds = sorted({len(group) for group in groups})
    if seeds == [1]:
        return "one seed: no interval to draw"
    if seeds[0] == 1:
        return "bars: 95 % interval over seeds (none for one seed)"
    return "bars: 95 % interval over seeds"


def epoch_position(step: int, per_epoch: float) -> float:
    """Where training step `step` (1-based, as logged) lies on EPOCH_AXIS: in [e, e + 1) for epoch e."""
    return (step - 1) / per_epoch


def _train_losses(group: list[Run]) -> tuple[list[float], list[float]]:
    """The training loss's running mean, averaged over the replicates at the steps they all logged."""
    series = [{r["step"]: r["loss"] for r in run.of_type("train")} for run in group]
    steps = sorted(set.intersection(*(set(s) for s in series)))
    per_epoch = group[0].steps_per_epoch
    xs = [epoch_position(step, per_epoch) for step in steps]
    return xs, [float(np.mean([s[step] for s in series])) for step in steps]


def curves_figure(study: str, runs: list[Run]) -> Figure:
    """Loss and val error side by side, a colour per setting (the same in both), one legend below both."""
    fig, (ax_loss, ax_val) = new_figure(1, 2, width=11, height=4)
    groups = replicate_groups(runs)
    for group, label, colour in zip(groups, group_labels(groups), colours(len(groups)), strict=True):
        ax_loss.plot(*_train_losses(group), label=label, color=colour)
        plot_val_curve(ax_val, group, label, marker=".", color=colour)
    ax_loss.set_title(f"{study}: training loss\nrunning mean, mean over seeds", fontsize=10)
    ax_loss.set_ylabel("cross-entropy (train)")
    ax_val.set_title(
        f"{study}: val error, centre crop, at each epoch's end\n{interval_note(groups)}", fontsize=10
    )
    ax_val.set_ylabel("val top-1 error (%)")
    for ax in (ax_loss, ax_val):
        ax.set_xlabel(EPOCH_AXIS)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    legend_below(fig, [ax_val])  # the val labels carry the seed counts
    return fig


def curves_section(groups: dict[str, list[Run]]) -> Section:
    """One figure of curves per study (groups: study -> its runs)."""
    section = Section(["## Training curves", ""])
    for study, members in groups.items():
        name = f"{study}_curves.png"
        section.figures[name] = curves_figure(study, members)
        section.lines += [f"### {study}", "", f"![{study} curves]({name})", ""]
    return section
