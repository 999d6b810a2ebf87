"""The init study (Figs. 2 and 3: He vs Xavier, curves and gradients) and the Sec. 2.2 check of
delving-init-check, as report sections."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from delving.paper import PAPER_FIGURES
from delving.report.curves import EPOCH_AXIS, epoch_position, interval_note, plot_val_curve
from delving.report.evidence import replicate_groups
from delving.report.init_check import fmt_stat
from delving.report.plots import new_figure
from delving.report.runs import Run
from delving.report.section import Section, fmt_num

_INIT_FIGURES = ("fig2", "fig3")


def _chance(run: Run) -> float:
    return 100.0 * (1.0 - 1.0 / run.num_classes) if run.num_classes else float("nan")


def _conv_names(run: Run) -> list[str]:
    return [name for name in run.weight_norms if name.startswith("features.")]


def _init_study_figure(study: str, runs: list[Run]) -> Figure:
    """Figure 2/3 style: val top-1 error vs epoch, He vs Xavier, plus the loss-gradient norms of the end convs."""
    fig, (ax_err, ax_grad) = new_figure(1, 2, width=11, height=4)
    for group in replicate_groups(runs):
        run = group[0]  # the gradients of its first seed (the others look alike, and would hide it)
        init = str(run.model.get("init"))
        plot_val_curve(ax_err, group, init, marker="o")
        convs = _conv_names(run)
        trains = run.of_type("train")
        per_epoch = run.steps_per_epoch
        for conv, style in ((convs[0], "-"), (convs[-1], ":")) if convs else ():
            key = f"grad_norm/{conv}"
            points = [
                (epoch_position(r["step"], per_epoch), r[key]) for r in trains if r.get(key) is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax_grad.semilogy(xs, ys, style, label=f"{init} {conv.removeprefix('features.')}")
    if runs:
        ax_err.axhline(_chance(runs[0]), color="grey", linestyle="--", label="chance")
    model = runs[0].model.get("name") if runs else "?"
    ax_err.set_title(f"{study}: {model}, ReLU, He vs Xavier init\n{interval_note(replicate_groups(runs))}")
    ax_err.set_xlabel(EPOCH_AXIS)
    ax_err.set_ylabel("val top-1 error (%)")
    ax_grad.set_title("loss-gradient norm (weight decay excluded)\nfirst seed")
    ax_grad.set_xlabel(EPOCH_AXIS)
    ax_grad.set_ylabel("||dE/dW|| of the first and last conv")
    for ax in (ax_err, ax_grad):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no gradients logged: no legend to draw
            ax.legend(fontsize=8)
    return fig


def _init_study_table(runs: list[Run]) -> list[str]:
    """Final errors and, for the first and last conv, the last logged loss gradient against weight decay's."""
    lines = [
        "| init | last val top-1 (%) | chance (%) | first conv: loss grad / weight-decay grad | "
        "last conv: loss grad / weight-decay grad |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        decay = float(run.config.get("optim", {}).get("weight_decay", 0.0))
        trains = run.of_type("train")
        cells = []
        for conv in (_conv_names(run)[:1] + _conv_names(run)[-1:]) or []:
            grads = [r[f"grad_norm/{conv}"] for r in trains if r.get(f"grad_norm/{conv}") is not None]
            decay_grad = decay * run.weight_norms[conv]
            if grads and decay_grad > 0:
                cells.append(f"{grads[-1]:.2e} / {decay_grad:.2e} = {grads[-1] / decay_grad:.2g}")
            else:
                cells.append("–")
        val = run.final_val or {}
        lines.append(
            f"| {run.model.get('init')} | {fmt_num(val.get('val_top1_error'))} | {fmt_num(_chance(run))} | "
            + " | ".join(cells or ["–", "–"])
            + " |"
        )
    return lines


def init_study_section(groups: dict[str, list[Run]]) -> Section:
    """A section per init study among the groups (study -> its runs): the table, the paper's words, the plot."""
    section = Section()
    for study, members in groups.items():
        if study not in _INIT_FIGURES:
            continue
        name = f"{study}_init.png"
        section.figures[name] = _init_study_figure(study, members)
        paper = PAPER_FIGURES[study]
        section.lines += [
            f"## {study}: He vs Xavier init",
            "",
            f"Paper: He init: {paper.get('he_fan_out', '–')}. Xavier: {paper.get('xavier', '–')}.",
            "",
            *_init_study_table(members),
            "",
            "Loss gradient: the norm of dE/dW logged at the last logging step (weight decay is added by the "
            "optimizer, not in it); weight-decay gradient: weight_decay × ||W|| of the final weights. "
            "A ratio far below 1 means the layer's update is almost all weight decay.",
            "",
            f"![{study}]({name})",
            "",
        ]
    return section


def init_check_section(init_checks: dict[str, list[dict[str, Any]]]) -> Section:
    """delving-init-check's gains, by source (nothing without one); report.json gets the files' contents."""
    section = Section(summary={"init_checks": init_checks})
    if not init_checks:
        return section
    section.lines = [
        "## Initialization check (Sec. 2.2, delving-init-check)",
        "",
        "| source | model | init | forward gain (last / first conv) | backward gain (first / last conv) |",
        "|---|---|---|---|---|",
    ]
    for source, entries in init_checks.items():
        for entry in entries:
            section.lines.append(
                f"| {source} | {entry['model']} | {entry['init']} | "
                f"{fmt_stat(entry['forward_gain_last_over_first'])} | "
                f"{fmt_stat(entry['backward_gain_first_over_last'])} |"
            )
    section.lines += [
        "",
        "– : no gradient reaches the last conv (timm's ResNets zero-initialize the last BN of each block).",
        "",
    ]
    return section
