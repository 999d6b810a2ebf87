"""The paper's reported errors (arXiv v1, Tables 2, 4, 5, 6, 7), for tables of "paper vs ours".

Each row says which of our runs it matches: model name, activation, protocol and test scale.
Rows of other teams (VGG, GoogLeNet, ...) have model=None and are shown for context only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PaperRow:
    label: str
    top1: float | None  # percent; None where the paper gives no number
    top5: float | None
    model: str | None = None  # our model name, None for other teams' results
    act: str | None = None  # relu | prelu | prelu_shared
    protocol: str | None = None  # center | ten_view | dense | multiscale | ensemble
    scale: int | None = None  # the single test scale (paper pixels) where the row has one


@dataclass(frozen=True)
class PaperTable:
    key: str
    title: str
    split: str  # the ImageNet-2012 split the paper scored on
    rows: tuple[PaperRow, ...]


PAPER_TABLES: dict[str, PaperTable] = {
    table.key: table
    for table in (
        PaperTable(
            "table2",
            "Table 2: ReLU vs PReLU, 14-layer net, 10-view at scale 256",
            "val",
            (
                PaperRow("ReLU", 33.82, 13.34, "net14", "relu", "ten_view", 256),
                PaperRow("PReLU, channel-shared", 32.71, 12.87, "net14", "prelu_shared", "ten_view", 256),
                PaperRow("PReLU, channel-wise", 32.64, 12.75, "net14", "prelu", "ten_view", 256),
            ),
        ),
        PaperTable(
            "table4",
            "Table 4: ReLU vs PReLU, model A, dense test",
            "val",
            tuple(
                PaperRow(
                    f"A, {name}, {'multi-scale' if scale is None else f's={scale}'}",
                    t1,
                    t5,
                    "model_a",
                    act,
                    "multiscale" if scale is None else "dense",
                    scale,
                )
                for act, name, numbers in (
                    (
                        "relu",
                        "ReLU",
                        ((256, 26.25, 8.25), (384, 24.77, 7.26), (480, 25.46, 7.63), (None, 24.02, 6.51)),
                    ),
                    (
                        "prelu",
                        "PReLU",
                        ((256, 25.81, 8.08), (384, 24.20, 7.03), (480, 24.83, 7.39), (None, 22.97, 6.28)),
                    ),
                )
                for scale, t1, t5 in numbers
            ),
        ),
        PaperTable(
            "table5",
            "Table 5: single model, 10-view",
            "val",
            (
                PaperRow("MSRA (SPP-net)", 29.68, 10.95),
                PaperRow("VGG-16 (the authors' test)", 28.07, 9.33),
                PaperRow("GoogLeNet", None, 9.15),
                PaperRow("A, ReLU", 26.48, 8.59, "model_a", "relu", "ten_view"),
                PaperRow("A, PReLU", 25.59, 8.23, "model_a", "prelu", "ten_view"),
                PaperRow("B, PReLU", 25.53, 8.13, "model_b", "prelu", "ten_view"),
                PaperRow("C, PReLU", 24.27, 7.38, "model_c", "prelu", "ten_view"),
            ),
        ),
        PaperTable(
            "table6",
            "Table 6: single model, multi-scale dense",
            "val",
            (
                PaperRow("MSRA SPP-net, ILSVRC 14 (test set)", 27.86, 9.08),
                PaperRow("VGG, ILSVRC 14 (test set)", None, 8.43),
                PaperRow("GoogLeNet, ILSVRC 14", None, 7.89),
                PaperRow("VGG (arXiv v2)", 24.8, 7.5),
                PaperRow("VGG (arXiv v5)", 24.4, 7.1),
                PaperRow("Baidu", 24.88, 7.42),
                PaperRow("MSRA (A, ReLU)", 24.02, 6.51, "model_a", "relu", "multiscale"),
                PaperRow("MSRA (A, PReLU)", 22.97, 6.28, "model_a", "prelu", "multiscale"),
                PaperRow("MSRA (B, PReLU)", 22.85, 6.27, "model_b", "prelu", "multiscale"),
                PaperRow("MSRA (C, PReLU)", 21.59, 5.71, "model_c", "prelu", "multiscale"),
            ),
        ),
        PaperTable(
            "table7",
            "Table 7: multi-model ensembles, top-5 on the ILSVRC-2012 test set",
            "test",
            (
                PaperRow("MSRA, SPP-nets (ILSVRC 14)", None, 8.06),
                PaperRow("VGG (ILSVRC 14)", None, 7.32),
                PaperRow("GoogLeNet (ILSVRC 14)", None, 6.66),
                PaperRow("VGG (arXiv v5)", None, 6.8),
                PaperRow("Baidu", None, 5.98),
                PaperRow("MSRA, PReLU-nets (6 models)", None, 4.94, protocol="ensemble"),
            ),
        ),
    )
}

# Sec. 5 per-class analysis of the 4.94% ensemble (top-5 error per class).
PAPER_PER_CLASS = {
    "zero_top5_error_classes": 113,
    "worst_classes": (("letter opener", 49.0), ("spotlight", 38.0), ("restaurant", 36.0)),
    "vs_ilsvrc14_entry": {"fell": 824, "same": 127, "rose": 49},
}


# Figures 2 and 3 (the init studies): what the paper's plots show, read off the curves.
PAPER_FIGURES: dict[str, dict[str, str]] = {
    "fig2": {
        "metric": "top-1 error (%) on 3,000 random val images, centre crop",
        "he_fan_out": "converges and starts lowering the error earlier (about 79% top-1 error at epoch 3, from the plot)",
        "xavier": "converges more slowly (about 85.5% top-1 error at epoch 3, from the plot)",
    },
    "fig3": {
        "metric": "top-1 error (%) on 3,000 random val images, centre crop",
        "he_fan_out": "converges (about 80% top-1 error after ~9.5 epochs, read from the plot)",
        "xavier": "completely stalls (flat at about 100% error); all its gradients vanish",
        "final_he_fan_out": "38.56 / 16.59 top-1 / top-5 error after full training, 10-view (Sec. 2.3)",
    },
}


def paper_table(key: str) -> PaperTable:
    if key not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {key!r}; choose one of {', '.join(PAPER_TABLES)}")
    return PAPER_TABLES[key]


def find_paper_row(
    key: str, model: str | None, act: str | None, protocol: str | None, scales: list[int] | None = None
) -> PaperRow | None:
    """The row of table `key` that a run of (model, act, protocol, scales) reproduces, if any."""
    single_scale = scales[0] if scales and len(scales) == 1 else None
    for row in paper_table(key).rows:
        if row.model is None or (row.model, row.act) != (model, act):
            continue
        if row.protocol != protocol:
            continue
        if row.scale is not None and row.scale != single_scale:
            continue
        return row
    return None


def resolve_reference(reference: Mapping[str, Any]) -> PaperRow | dict[str, str]:
    """An experiment's `paper_reference` ({table, row} or {figure}) as the paper's numbers: the row of
    PAPER_TABLES, or the figure's description. The configs hold only these keys, never a copy of a number."""
    if "figure" in reference:
        if reference["figure"] not in PAPER_FIGURES:
            raise ValueError(
                f"unknown paper figure {reference['figure']!r}; choose one of {', '.join(PAPER_FIGURES)}"
            )
        return PAPER_FIGURES[reference["figure"]]
    rows = {row.label: row for row in paper_table(reference["table"]).rows}
    if reference.get("row") not in rows:
        raise ValueError(
            f"{reference['table']} has no row {reference.get('row')!r}; its rows: {', '.join(rows)}"
        )
    return rows[reference["row"]]
