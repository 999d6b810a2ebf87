"""The paper's facts in one place: He et al. 2015, "Delving Deep into Rectifiers" (arXiv v1).

Plain data that imports nothing of delving, so every room may read it: the input the nets were trained on,
the test scales, the reported errors (Tables 2, 4-7) with the runs each row matches, Table 1's learned
slopes, what Figures 2 and 3 show, and the findings the report decides. A finding's "paper" numbers are
read from the table rows here, never typed a second time.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from enum import Enum

# ------------------------------------------------------------------ the input and the test scales

PAPER_INPUT_SIZE = 224  # the training crop; the paper's test scales (shorter sides) are for it
PAPER_SCALES = (256, 384, 480)  # the shorter sides of the multi-scale dense test (Tables 4 and 6)
# The mean RGB colour the paper subtracts, on the 0-255 scale (no std division: the input is ~[-128, 128]).
PAPER_MEAN_RGB = (123.675, 116.28, 103.53)
# The paper divides by no std; data.normalize=mean_std uses the usual ImageNet one on the 0-255 scale
# (torchvision's 0.229/0.224/0.225 x 255, beside its mean 0.485/0.456/0.406 x 255 = PAPER_MEAN_RGB).
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)


# ------------------------------------------------------------------ the reported errors


@dataclass(frozen=True)
class PaperRow:
    """One row of a table. model, act, protocol and scale say which of our runs it matches; rows of other
    teams (VGG, GoogLeNet, ...) have model=None and are shown for context only."""

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

# Table 1 [P p.3]: learned PReLU slopes of the 14-layer net: layer -> (channel-shared, channel-wise mean).
# Layer names are ours (conv2_1 is the paper's conv21).
TABLE1_SLOPES: dict[str, tuple[float, float]] = {
    "conv1": (0.681, 0.596),
    "conv2_1": (0.103, 0.321),
    "conv2_2": (0.099, 0.204),
    "conv2_3": (0.228, 0.294),
    "conv2_4": (0.561, 0.464),
    "conv3_1": (0.126, 0.196),
    "conv3_2": (0.089, 0.152),
    "conv3_3": (0.124, 0.145),
    "conv3_4": (0.062, 0.124),
    "conv3_5": (0.008, 0.134),
    "conv3_6": (0.210, 0.198),
    "fc1": (0.063, 0.074),
    "fc2": (0.031, 0.075),
}


# ------------------------------------------------------------------ the findings the report decides


class Expect(str, Enum):
    """What the paper says of `a - b`."""

    LESS = "less"  # a below b (an error lower, a slope smaller)
    GREATER = "greater"
    EQUAL = "equal"  # within ± margin


@dataclass(frozen=True)
class Measure:
    """One side of a finding: the paper's experiment (its `_mini` twin matches too), config values its runs
    must have (`model.init=xavier`), and what is measured.

    kind: "error" (top-1 error of `protocol` at `scales`, image by image), "ensemble" (the mean softmax of
    `members`' predictions, seed by seed), "best" (the member with the lowest mean error), "curve" (the
    mean of the validation top-1 curve over epochs), "slope_conv1" (conv1's mean learned slope minus the
    mean of the deeper convs' means), "chance" (100 (1 - 1 / classes)), "constant" (0).
    """

    kind: str
    experiment: str = ""
    protocol: str = ""
    scales: tuple[int, ...] = (256,)
    where: tuple[tuple[str, str], ...] = ()  # config key, value the runs must have
    members: tuple[Measure, ...] = ()
    label: str = ""
    k: int = 1  # top-k error (Table 7's claim is top-5)

    @property
    def name(self) -> str:
        return self.label or self.experiment


@dataclass(frozen=True)
class Finding:
    """The paper's statement as a comparison `a - b`: "PReLU's 10-view top-1 error is below ReLU's" is
    `a` = the channel-wise net's ten_view error, `b` = the ReLU net's, expect LESS."""

    source: str  # "Table 2", "Fig. 3"
    claim: str  # the paper's statement, in words
    a: Measure
    b: Measure
    expect: Expect
    paper: str  # the paper's numbers for a and b (from PAPER_TABLES / TABLE1_SLOPES), or its words
    margin: float = 0.0  # EQUAL: within ±margin; LESS / GREATER: beyond it


# "About equal" in the paper (0.06-0.07 points apart) is decided as "within this many points" here.
EQUAL_MARGIN = 2.0


def _row(table: str, label: str) -> PaperRow:
    return {row.label: row for row in PAPER_TABLES[table].rows}[label]


def _top1_vs(table: str, a: str, b: str) -> str:
    """Two rows' top-1 errors as the findings table shows them: `32.64 vs 33.82`."""
    return f"{_row(table, a).top1:.2f} vs {_row(table, b).top1:.2f}"


def _slope_gap(column: int) -> str:
    """Table 1's conv1 slope against the mean of its deeper convs' (column 0: channel-shared, 1: wise)."""
    deeper = statistics.fmean(
        v[column] for layer, v in TABLE1_SLOPES.items() if layer.startswith("conv") and layer != "conv1"
    )
    conv1 = TABLE1_SLOPES["conv1"][column]
    return f"{conv1:.3f} - {deeper:.3f} = {conv1 - deeper:.3f}"


def _ensemble_vs_best() -> str:
    ensemble = next(row for row in PAPER_TABLES["table7"].rows if row.protocol == "ensemble")
    c_prelu = _row("table6", "MSRA (C, PReLU)")
    return f"{ensemble.top5:.2f} top-5 (6 models) vs C's {c_prelu.top5:.2f} ({PAPER_TABLES['table6'].split})"


def _error(experiment: str, protocol: str, scales: tuple[int, ...] = (256,), **where: str) -> Measure:
    return Measure("error", experiment, protocol, scales, tuple(where.items()))


def _chance(experiment: str, **where: str) -> Measure:
    return Measure("chance", experiment, where=tuple(where.items()), label="chance")


def _top5(experiment: str) -> Measure:
    return Measure("error", experiment, "multiscale", PAPER_SCALES, k=5)


_XAVIER, _HE = {"model.init": "xavier"}, {"model.init": "he_fan_out"}
_A_RELU, _A_PRELU = "table4_model_a_relu", "table4_model_a_prelu"
_B_PRELU, _C_PRELU = "table6_model_b_prelu", "table6_model_c_prelu"
_MULTI = PAPER_SCALES
_TABLE7_MEMBERS = tuple(_top5(e) for e in (_A_RELU, _A_PRELU, _B_PRELU, _C_PRELU))

# The paper's findings that the (mini) experiments can test, in the order of the paper.
FINDINGS: tuple[Finding, ...] = (
    Finding(
        "Table 2",
        "PReLU channel-wise beats ReLU (10-view top-1)",
        _error("table2_net14_prelu", "ten_view"),
        _error("table2_net14_relu", "ten_view"),
        Expect.LESS,
        _top1_vs("table2", "PReLU, channel-wise", "ReLU"),
    ),
    Finding(
        "Table 2",
        "PReLU channel-shared beats ReLU",
        _error("table2_net14_prelu_shared", "ten_view"),
        _error("table2_net14_relu", "ten_view"),
        Expect.LESS,
        _top1_vs("table2", "PReLU, channel-shared", "ReLU"),
    ),
    Finding(
        "Table 2",
        f"channel-wise ≈ channel-shared (within ±{EQUAL_MARGIN:g} points)",
        _error("table2_net14_prelu", "ten_view"),
        _error("table2_net14_prelu_shared", "ten_view"),
        Expect.EQUAL,
        _top1_vs("table2", "PReLU, channel-wise", "PReLU, channel-shared"),
        EQUAL_MARGIN,
    ),
    Finding(
        "Table 1",
        "channel-wise: conv1's learned slope is above the deeper convs' (mean slope, conv1 minus deeper)",
        Measure("slope_conv1", "table2_net14_prelu", label="conv1 - deeper"),
        Measure("constant", label="0"),
        Expect.GREATER,
        _slope_gap(1),
    ),
    Finding(
        "Table 1",
        "channel-shared: conv1's learned slope is above the deeper convs'",
        Measure("slope_conv1", "table2_net14_prelu_shared", label="conv1 - deeper"),
        Measure("constant", label="0"),
        Expect.GREATER,
        _slope_gap(0),
    ),
    Finding(
        "Fig. 2",
        f"22-layer model B, He init: converges (final centre-crop top-1 more than {EQUAL_MARGIN:g} points below chance)",
        _error("fig2_model_b", "center", **_HE),
        _chance("fig2_model_b", **_HE),
        Expect.LESS,
        "converges",
        EQUAL_MARGIN,
    ),
    Finding(
        "Fig. 2",
        "22-layer model B, Xavier init: converges too",
        _error("fig2_model_b", "center", **_XAVIER),
        _chance("fig2_model_b", **_XAVIER),
        Expect.LESS,
        "converges, later than He",
        EQUAL_MARGIN,
    ),
    Finding(
        "Fig. 2",
        "He lowers the error earlier (mean val top-1 over the epochs, He minus Xavier)",
        Measure("curve", "fig2_model_b", where=tuple(_HE.items()), label="He curve"),
        Measure("curve", "fig2_model_b", where=tuple(_XAVIER.items()), label="Xavier curve"),
        Expect.LESS,
        "He ahead at every epoch",
    ),
    Finding(
        "Fig. 3",
        "30-layer net, He init: converges",
        _error("fig3_deep30", "center", **_HE),
        _chance("fig3_deep30", **_HE),
        Expect.LESS,
        "converges",
        EQUAL_MARGIN,
    ),
    Finding(
        "Fig. 3",
        f"30-layer net, Xavier init: stalls at chance (within ±{EQUAL_MARGIN:g} points)",
        _error("fig3_deep30", "center", **_XAVIER),
        _chance("fig3_deep30", **_XAVIER),
        Expect.EQUAL,
        "stalls completely",
        EQUAL_MARGIN,
    ),
    *(
        Finding(
            "Table 4",
            f"model A: PReLU beats ReLU, dense at {scale}",
            _error(_A_PRELU, "dense", (scale,)),
            _error(_A_RELU, "dense", (scale,)),
            Expect.LESS,
            _top1_vs("table4", f"A, PReLU, s={scale}", f"A, ReLU, s={scale}"),
        )
        for scale in PAPER_SCALES
    ),
    Finding(
        "Table 4",
        "model A: PReLU beats ReLU, multi-scale dense",
        _error(_A_PRELU, "multiscale", _MULTI),
        _error(_A_RELU, "multiscale", _MULTI),
        Expect.LESS,
        _top1_vs("table4", "A, PReLU, multi-scale", "A, ReLU, multi-scale"),
    ),
    Finding(
        "Table 4",
        "model A PReLU: 384 beats 256 (dense)",
        _error(_A_PRELU, "dense", (384,)),
        _error(_A_PRELU, "dense", (256,)),
        Expect.LESS,
        _top1_vs("table4", "A, PReLU, s=384", "A, PReLU, s=256"),
    ),
    Finding(
        "Table 4",
        "model A PReLU: multi-scale beats the best single scale (384)",
        _error(_A_PRELU, "multiscale", _MULTI),
        _error(_A_PRELU, "dense", (384,)),
        Expect.LESS,
        _top1_vs("table4", "A, PReLU, multi-scale", "A, PReLU, s=384"),
    ),
    Finding(
        "Table 5",
        "model A: PReLU beats ReLU, 10-view",
        _error(_A_PRELU, "ten_view"),
        _error(_A_RELU, "ten_view"),
        Expect.LESS,
        _top1_vs("table5", "A, PReLU", "A, ReLU"),
    ),
    Finding(
        "Table 5",
        f"B ≈ A (PReLU, 10-view, within ±{EQUAL_MARGIN:g} points)",
        _error(_B_PRELU, "ten_view"),
        _error(_A_PRELU, "ten_view"),
        Expect.EQUAL,
        _top1_vs("table5", "B, PReLU", "A, PReLU"),
        EQUAL_MARGIN,
    ),
    Finding(
        "Table 5",
        "the wider C beats B (10-view)",
        _error(_C_PRELU, "ten_view"),
        _error(_B_PRELU, "ten_view"),
        Expect.LESS,
        _top1_vs("table5", "C, PReLU", "B, PReLU"),
    ),
    Finding(
        "Table 6",
        "C beats B (multi-scale dense)",
        _error(_C_PRELU, "multiscale", _MULTI),
        _error(_B_PRELU, "multiscale", _MULTI),
        Expect.LESS,
        _top1_vs("table6", "MSRA (C, PReLU)", "MSRA (B, PReLU)"),
    ),
    Finding(
        "Table 6",
        "C beats A (PReLU, multi-scale dense)",
        _error(_C_PRELU, "multiscale", _MULTI),
        _error(_A_PRELU, "multiscale", _MULTI),
        Expect.LESS,
        _top1_vs("table6", "MSRA (C, PReLU)", "MSRA (A, PReLU)"),
    ),
    Finding(
        "Table 7",
        "the ensemble of A-ReLU, A-PReLU, B, C (mean softmax) beats its best member (multi-scale, top-5)",
        Measure("ensemble", members=_TABLE7_MEMBERS, label="ensemble", k=5),
        Measure("best", members=_TABLE7_MEMBERS, label="best member", k=5),
        Expect.LESS,
        _ensemble_vs_best(),
    ),
)
