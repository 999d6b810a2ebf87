"""The report: paper-vs-ours tables, init-study curves, learned slopes and training curves, from run directories.

`build_report` returns the markdown and the matplotlib figures (tests inspect them); `write_report` saves them.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from delving.evaluation.paper_results import PAPER_FIGURES, PAPER_TABLES, PaperRow, find_paper_row
from delving.io import utf8, write_folder_atomically
from delving.report.findings import (
    EQUAL_MARGIN,
    Evidence,
    FindingResult,
    Measure,
    decide_all,
    replicate_groups,
    seed_of,
)
from delving.report.init_check import fmt_stat
from delving.report.paper_slopes import TABLE1_SLOPES
from delving.report.plots import new_figure, save_figure
from delving.report.runs import EvalRecord, Run, label_runs
from delving.report.stats import Estimate, Expect, Verdict, error_estimate, seed_estimate

INIT_FIGURES = ("fig2", "fig3")


@dataclass
class Report:
    markdown: str
    figures: dict[str, Figure] = field(default_factory=dict)  # PNG file name -> figure
    summary: dict[str, Any] = field(default_factory=dict)  # what report.json holds


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _act(run: Run) -> str:
    return str(run.model.get("act"))


def _chance(run: Run) -> float:
    return 100.0 * (1.0 - 1.0 / run.num_classes) if run.num_classes else float("nan")


def _describe_test(record: EvalRecord) -> str:
    scales = "/".join(str(s) for s in record.scales or [])
    return f"{record.protocol} {scales}, {record.num_images} images"


def _data_line(run: Run) -> str:
    data, model = run.config.get("data", {}), run.model
    name = data.get("name")
    if name == "synthetic":
        where = f"synthetic, {data.get('synthetic_classes')} classes"
    else:
        where = f"{name} {data.get('root') or ''}".strip()
    return (
        f"{where}; {model.get('name')} width {model.get('width')}, {model.get('input_size')} px crops, "
        f"{epochs_text(run)} epochs"
    )


def epochs_text(run: Run) -> str:
    """The planned epochs; for a run without finished.json, the epochs its last.pt holds of them, and why."""
    planned = run.config.get("train", {}).get("epochs")
    if run.finished:
        return f"{planned}"
    if not run.has_checkpoint:
        return f"0 of {planned} (no checkpoint: stopped before its first save)"
    return f"{run.epochs_done} of {planned} (unfinished: no finished.json)"


UNFINISHED_NOTE = (
    "A run marked unfinished has no finished.json: it was stopped, killed or is still running, and its numbers "
    "are those of the epochs shown. Relaunching its command continues it."
)


# ------------------------------------------------------------------ tables


def run_table(runs: list[Run]) -> list[str]:
    lines = [
        "| run | folder | seed | model | act | init | data | epochs | last val top-1 / top-5 (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        val = run.final_val or {}
        data = run.config.get("data", {})
        lines.append(
            f"| {run.title} | `{run.path.name}` | {seed_of(run)} | "
            f"{run.model.get('name')} (width {run.model.get('width')}) | "
            f"{_act(run)} | {run.model.get('init')} | {data.get('name')} | "
            f"{epochs_text(run)} | "
            f"{_num(val.get('val_top1_error'))} / {_num(val.get('val_top5_error'))} |"
        )
    if not all(run.finished for run in runs):
        lines += ["", UNFINISHED_NOTE]
    return lines


def match_rows(key: str, runs: list[Run]) -> dict[str, tuple[Run, EvalRecord]]:
    """Paper row label -> the first (run, test) that reproduces it: same model, act, protocol, scale."""
    found: dict[str, tuple[Run, EvalRecord]] = {}
    for run in runs:
        for record in run.evals:
            row = find_paper_row(key, run.model.get("name"), _act(run), record.protocol, record.scales)
            if row is not None and row.label not in found:
                found[row.label] = (run, record)
    return found


def paper_table_section(
    key: str, runs: list[Run], ensembles: list[dict[str, Any]], evidence: Evidence | None = None
) -> list[str]:
    table = PAPER_TABLES[key]
    evidence = evidence or Evidence(runs)
    matched = match_rows(key, runs)
    ensemble = next((e for e in ensembles if (e.get("paper_table") or {}).get("key") == key), None)
    if not matched and ensemble is None:
        return []
    lines = [
        f"### {table.title}",
        "",
        f"Paper: ImageNet-2012 {table.split}. Ours: the run's own val split (see the data column).",
        "",
        "| paper row | paper top-1 | paper top-5 | ours top-1 | ours top-5 | our run | our test | data |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table.rows:
        ours = _ours_for_row(row, matched, ensemble, evidence)
        lines.append(f"| {row.label} | {_num(row.top1)} | {_num(row.top5)} | {ours} |")
    return [*lines, ""]


def replicate_errors(evidence: Evidence, run: Run, record: EvalRecord) -> tuple[Estimate, Estimate, int]:
    """Top-1 and top-5 error of `record`'s test over the run's replicates (its other seeds), with intervals."""
    test = Measure("error", run.name, record.protocol, tuple(record.scales or ()))
    replicates = [r for r in evidence.replicates_of(run) if _has_test(r, record)]
    top1 = evidence.errors(replicates, test, k=1).wrong
    top5 = evidence.errors(replicates, test, k=5).wrong
    return error_estimate(top1), error_estimate(top5), len(replicates)


def tests_table(runs: list[Run], evidence: Evidence) -> list[str]:
    """Every test of every setting: the mean over its seeds with the 95 % interval (seeds and images)."""
    lines = [
        "| setting | test | seeds | top-1 error (%) [95 % interval] | top-5 error (%) [95 % interval] |",
        "|---|---|---|---|---|",
    ]
    for group in replicate_groups(runs):
        tests = {(e.protocol, tuple(e.scales or ())): e for run in group for e in run.evals}
        for (protocol, scales), record in sorted(tests.items()):
            top1, top5, seeds = replicate_errors(evidence, group[0], record)
            lines.append(
                f"| {group[0].setting_label} | {protocol} {'/'.join(map(str, scales))} | {seeds} | "
                f"{top1.text()} | {top5.text()} |"
            )
    return lines


def _has_test(run: Run, record: EvalRecord) -> bool:
    return any(e.protocol == record.protocol and e.scales == record.scales for e in run.evals)


def _ours_for_row(
    row: PaperRow,
    matched: dict[str, tuple[Run, EvalRecord]],
    ensemble: dict[str, Any] | None,
    evidence: Evidence,
) -> str:
    if row.protocol == "ensemble" and ensemble is not None:
        ens, data = ensemble["ensemble"], ensemble["data"]
        members = ", ".join(ensemble["ensemble"]["members"])
        return (
            f"{_num(ens['top1'])} | {_num(ens['top5'])} | ensemble of {members} | mean softmax | "
            f"{data.get('name')}, {data.get('scored_images')} images"
        )
    if row.label not in matched:
        return "| | | |" if row.model is None else "– | – | not run | | "
    run, record = matched[row.label]
    top1, top5, seeds = replicate_errors(evidence, run, record)
    title = f"{run.name}, {seeds} seeds" if seeds > 1 else run.title
    return f"{top1.text()} | {top5.text()} | {title} | {_describe_test(record)} | {_data_line(run)}"


# ------------------------------------------------------------------ init study (Figs. 2 and 3)


def _conv_names(run: Run) -> list[str]:
    return [name for name in run.weight_norms if name.startswith("features.")]


def init_study_figure(study: str, runs: list[Run]) -> Figure:
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
    fig.tight_layout()
    return fig


def init_study_table(runs: list[Run]) -> list[str]:
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
            f"| {run.model.get('init')} | {_num(val.get('val_top1_error'))} | {_num(_chance(run))} | "
            + " | ".join(cells or ["–", "–"])
            + " |"
        )
    return lines


# ------------------------------------------------------------------ learned slopes (Table 1, Fig. 4)


def layer_slopes(group: list[Run], layer: str) -> Estimate | None:
    """The layer's mean learned slope over the replicates (one number per seed: its channels' mean)."""
    values = [s.mean for run in group for s in run.slopes if s.layer == layer]
    return seed_estimate(np.array(values)) if len(values) == len(group) else None


def slopes_figure(title: str, runs: list[Run]) -> Figure:
    """Per layer: the mean slope with error bars (over seeds: the 95 % interval; one channel-wise run: the
    spread of its channels), Table 1's values for net14."""
    fig, (ax,) = new_figure(1, 1, width=9, height=4)
    layers = [s.layer for s in runs[0].slopes]
    positions = range(len(layers))
    for group in replicate_groups(runs):
        run = group[0]
        label = f"ours: {_act(run)}"
        estimates = [layer_slopes(group, layer) for layer in layers]
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


def slope_history_figure(run: Run) -> Figure | None:
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


def slopes_table(runs: list[Run]) -> list[str]:
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
        estimate = layer_slopes(group, layer)
        return "–" if estimate is None else estimate.text(3)
    stat = next((s for s in group[0].slopes if s.layer == layer), None)
    if stat is None:
        return "–"
    if stat.count == 1:
        return f"{stat.mean:.3f} (shared)"
    return f"{stat.mean:.3f} ± {stat.std:.3f} [{stat.min:.2f}, {stat.max:.2f}]"


# ------------------------------------------------------------------ the paper's findings, decided


VERDICT_COLOURS = {
    Verdict.HOLDS: "tab:green",
    Verdict.CONTRADICTED: "tab:red",
    Verdict.INCONCLUSIVE: "tab:orange",
}


def _expected(result: FindingResult) -> str:
    expect, margin = result.finding.expect, result.finding.margin
    if expect is Expect.EQUAL:
        return f"within ±{margin:g}"
    if expect is Expect.LESS:
        return f"< -{margin:g}" if margin else "< 0"
    return f"> {margin:g}"


def findings_table(results: list[FindingResult]) -> list[str]:
    lines = [
        "| source | the paper says | paper (a vs b) | ours: a | ours: b | a − b [95 % interval] | expected | seeds | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        finding = result.finding
        if result.verdict is None:
            lines.append(
                f"| {finding.source} | {finding.claim} | {finding.paper} | not run: {result.missing} | | | | | |"
            )
            continue
        digits = 3 if finding.a.kind.startswith("slope") else 2
        seeds = ",".join(map(str, result.seeds))
        lines.append(
            f"| {finding.source} | {finding.claim} | {finding.paper} | {result.a.text(digits)} | "
            f"{result.b.text(digits)}{result.b_note} | {result.difference.text(digits)} | {_expected(result)} | {seeds} | "
            f"**{result.verdict.value}** |"
        )
    return lines


def findings_figure(results: list[FindingResult]) -> Figure | None:
    """Each decided error finding: a - b with its 95 % interval, coloured by verdict, against 0 (and ±margin)."""
    shown = [r for r in results if r.verdict is not None and not r.finding.a.kind.startswith("slope")]
    if not shown:
        return None
    fig, (ax,) = new_figure(1, 1, width=9, height=0.8 + 0.35 * len(shown))
    for row, result in enumerate(reversed(shown)):
        diff = result.difference
        ax.errorbar(
            [diff.mean],
            [row],
            xerr=[[diff.mean - diff.low], [diff.high - diff.mean]],
            fmt="o",
            capsize=3,
            color=VERDICT_COLOURS[result.verdict],
        )
    ax.axvline(0.0, color="black", linewidth=0.8)
    for margin in (-EQUAL_MARGIN, EQUAL_MARGIN):
        ax.axvline(margin, color="grey", linewidth=0.6, linestyle=":")
    ax.set_yticks(
        range(len(shown)),
        [f"{r.finding.source}: {r.finding.claim}"[:70] for r in reversed(shown)],
        fontsize=7,
    )
    ax.set_xlabel("a − b, error points (top-1; Table 7: top-5), with its 95 % interval")
    ax.set_title("The paper's findings: green holds, red contradicted, orange inconclusive", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _findings_section(results: list[FindingResult], report: Report) -> list[str]:
    if all(result.verdict is None for result in results):
        return []
    md = [
        "## The paper's findings, decided by interval",
        "",
        "Each finding compares two measures as the paper does (a − b; an error below is better). Numbers "
        "are means over the seeds with their 95 % interval, which counts both noises: the spread between "
        "seeds and the finite validation set (per-image errors; Student's t, Welch-Satterthwaite degrees of "
        "freedom; see `delving/report/stats.py`). **holds**: the whole interval of a − b says what the paper "
        "says; **contradicted**: the whole interval says the opposite; **inconclusive**: it straddles. "
        f'"≈" findings hold inside ±{EQUAL_MARGIN:g} points. Slopes are decided over seeds alone.',
        "",
        *findings_table(results),
        "",
    ]
    figure = findings_figure(results)
    if figure is not None:
        report.figures["findings.png"] = figure
        md += ["![findings](findings.png)", ""]
    return md


# ------------------------------------------------------------------ training curves


# The x-axis of every per-epoch plot: epoch e is the logs' "epoch e" (validated at its end; its training steps
# lie in [e, e + 1)).
EPOCH_AXIS = "epoch (from 0, as the logs count)"


def val_curve(group: list[Run], key: str = "val_top1_error") -> tuple[list[int], list[Estimate]]:
    """Epochs (0-based, as logged) that every replicate validated at, and the error there over the seeds."""
    curves = [{v["epoch"]: v[key] for v in run.of_type("val") if v.get(key) is not None} for run in group]
    epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    return epochs, [seed_estimate(np.array([c[e] for c in curves])) for e in epochs]


def plot_val_curve(ax: Axes, group: list[Run], label: str, **style: Any) -> None:
    """The mean over seeds with its 95 % interval as error bars (a plain line for one seed)."""
    epochs, estimates = val_curve(group)
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
    fig, (ax_loss, ax_val) = new_figure(1, 2, width=11, height=4)
    groups = replicate_groups(runs)
    for group in groups:
        label = group[0].setting_label
        ax_loss.plot(*_train_losses(group), label=label)
        plot_val_curve(ax_val, group, label, marker=".")
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
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ the whole report


def _group(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        groups[run.study].append(run)
    return dict(sorted(groups.items()))


def build_report(
    runs: list[Run],
    ensembles: list[dict[str, Any]] | None = None,
    init_checks: dict[str, list[dict[str, Any]]] | None = None,
    title: str = "Reproduction report",
    command: str | None = None,
) -> Report:
    """Everything from already loaded runs, ensemble.json contents and init_check.json contents (by path).

    Runs that share an experiment name are labelled by the overrides that tell them apart (label_runs).
    """
    ensembles = ensembles or []
    init_checks = init_checks or {}
    label_runs(runs)
    report = Report("")
    md = [f"# {title}", ""]
    if command:
        md += ["Made with:", "", "```", command, "```", ""]
    evidence = Evidence(runs)
    results = decide_all(runs, evidence=evidence)
    md += _findings_section(results, report)
    md += ["## Runs", "", *run_table(runs), ""]
    md += ["## Every test, over seeds", "", *tests_table(runs, evidence), ""]
    md += [
        "## Paper vs ours",
        "",
        "Ours: the mean over a run's seeds with the 95 % interval of seeds and test images (one seed: the "
        "test images' alone).",
        "",
    ]
    tables = [line for key in PAPER_TABLES for line in paper_table_section(key, runs, ensembles, evidence)]
    md += tables or ["No run reproduces a row of the paper's tables.", ""]
    if ensembles:
        md += ["## Ensembles (delving-ensemble)", "", *ensembles_table(ensembles), ""]
    groups = _group(runs)
    md += _init_study_sections(groups, report)
    md += _slope_sections(groups, report)
    md += ["## Training curves", ""]
    for study, members in groups.items():
        name = f"{study}_curves.png"
        report.figures[name] = curves_figure(study, members)
        md += [f"### {study}", "", f"![{study} curves]({name})", ""]
    if init_checks:
        md += _init_check_section(init_checks)
    report.markdown = "\n".join(md)
    report.summary = {
        "runs": [
            {
                "path": str(run.path),
                "experiment": run.name,
                "label": run.title,
                "overrides": run.overrides,
                "study": run.study,
                "model": run.model,
                "final_val": run.final_val,
                "evals": [vars(e) for e in run.evals],
                "slopes": [vars(s) for s in run.slopes],
            }
            for run in runs
        ],
        "ensembles": ensembles,
        "init_checks": init_checks,
        "findings": [finding_summary(result) for result in results],
    }
    return report


def finding_summary(result: FindingResult) -> dict[str, Any]:
    finding = result.finding
    return {
        "source": finding.source,
        "claim": finding.claim,
        "paper": finding.paper,
        "expect": finding.expect.value,
        "margin": finding.margin,
        "a": None if result.a is None else vars(result.a),
        "b": None if result.b is None else vars(result.b),
        "difference": None if result.difference is None else vars(result.difference),
        "seeds": result.seeds,
        "verdict": None if result.verdict is None else result.verdict.value,
        "missing": result.missing,
    }


def ensembles_table(ensembles: list[dict[str, Any]]) -> list[str]:
    """One row per ensemble.json: members, weights, data and errors (and the selected ensemble's)."""
    lines = [
        "| ensemble | members | weights | data | images scored | top-1 (%) | top-5 (%) | selected: members, top-1 / top-5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, entry in enumerate(ensembles, 1):
        ens, data, selection = entry.get("ensemble", {}), entry.get("data", {}), entry.get("selection")
        chosen = "–"
        if selection:
            chosen = (
                f"{', '.join(selection['chosen'])}: {_num(selection['top1'])} / {_num(selection['top5'])}"
            )
        lines.append(
            f"| {entry.get('source', f'ensemble {number}')} | {', '.join(ens.get('members', []))} | "
            f"{ens.get('weights') or 'equal'} | {data.get('name')} / {data.get('split')} | "
            f"{data.get('scored_images')} | {_num(ens.get('top1'))} | {_num(ens.get('top5'))} | {chosen} |"
        )
    return lines


def _init_study_sections(groups: dict[str, list[Run]], report: Report) -> list[str]:
    md = []
    for study, members in groups.items():
        if study not in INIT_FIGURES:
            continue
        name = f"{study}_init.png"
        report.figures[name] = init_study_figure(study, members)
        paper = PAPER_FIGURES[study]
        md += [
            f"## {study}: He vs Xavier init",
            "",
            f"Paper: He init: {paper.get('he_fan_out', '–')}. Xavier: {paper.get('xavier', '–')}.",
            "",
            *init_study_table(members),
            "",
            "Loss gradient: the norm of dE/dW logged at the last logging step (weight decay is added by the "
            "optimizer, not in it); weight-decay gradient: weight_decay × ||W|| of the final weights. "
            "A ratio far below 1 means the layer's update is almost all weight decay.",
            "",
            f"![{study}]({name})",
            "",
        ]
    return md


def _slope_sections(groups: dict[str, list[Run]], report: Report) -> list[str]:
    prelu_groups = {s: [r for r in m if r.slopes] for s, m in groups.items()}
    prelu_groups = {s: m for s, m in prelu_groups.items() if m}
    md = ["## Learned PReLU slopes (Table 1, Fig. 4 style)", ""] if prelu_groups else []
    for study, members in prelu_groups.items():
        name = f"{study}_slopes.png"
        report.figures[name] = slopes_figure(f"{study}: learned slopes per layer", members)
        md += [f"### {study}", "", *slopes_table(members), "", f"![{study} slopes]({name})", ""]
        wise = next((r for r in members if any(s.count > 1 for s in r.slopes)), members[0])
        history = slope_history_figure(wise)
        if history is not None:
            report.figures[f"{study}_slope_history.png"] = history
            md += [f"![{study} slopes during training]({study}_slope_history.png)", ""]
    return md


def _init_check_section(init_checks: dict[str, list[dict[str, Any]]]) -> list[str]:
    md = [
        "## Initialization check (Sec. 2.2, delving-init-check)",
        "",
        "| source | model | init | forward gain (last / first conv) | backward gain (first / last conv) |",
        "|---|---|---|---|---|",
    ]
    for source, entries in init_checks.items():
        for entry in entries:
            md.append(
                f"| {source} | {entry['model']} | {entry['init']} | "
                f"{fmt_stat(entry['forward_gain_last_over_first'])} | "
                f"{fmt_stat(entry['backward_gain_first_over_last'])} |"
            )
    return [
        *md,
        "",
        "– : no gradient reaches the last conv (timm's ResNets zero-initialize the last BN of each block).",
        "",
    ]


REPORT_FILES = ("report.md", "report.json")


def write_report(report: Report, output_dir: str | Path) -> Path:
    """report.md, report.json and the PNGs in `output_dir`, all or nothing: written into a temp folder beside
    it, which then replaces the previous report (a full disk leaves that one whole). Returns report.md."""

    def write(folder: Path) -> None:
        for name, fig in report.figures.items():
            save_figure(fig, folder / name)
        (folder / "report.json").write_bytes(utf8(json.dumps(report.summary, indent=1, default=str) + "\n"))
        (folder / "report.md").write_bytes(utf8(report.markdown + "\n"))

    folder = write_folder_atomically(output_dir, write, _is_report_file)
    return folder / "report.md"


def _is_report_file(path: Path) -> bool:
    """A file a previous delving-report wrote (so the whole folder may be replaced)."""
    return path.is_file() and not path.is_symlink() and (path.name in REPORT_FILES or path.suffix == ".png")
