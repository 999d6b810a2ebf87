"""The paper's studies as experiment files: paper numbers agree with paper_results, and every study has a
mini twin making the same comparison (tests/test_report.py trains the minis on tiny data)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.configs import compose_config

from delving.cli.common import CONFIG_DIR
from delving.evaluation.paper_results import resolve_reference
from delving.models import build_model

EXPERIMENTS = Path(CONFIG_DIR) / "experiment"
STUDIES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem.startswith(("table", "fig")))
PAPER_SCALE = [s for s in STUDIES if not s.endswith("_mini")]


def compose_experiment(name: str, overrides: tuple[str, ...] = ()):
    return compose_config([f"experiment={name}", *overrides])


def test_every_study_of_the_issue_is_there() -> None:
    assert {"fig2_model_b", "fig3_deep30", "table4_model_a_relu", "table4_model_a_prelu"} <= set(PAPER_SCALE)
    assert {"table2_net14_relu", "table2_net14_prelu_shared", "table2_net14_prelu"} <= set(PAPER_SCALE)
    for table in ("table5", "table6"):
        assert {f"{table}_model_{m}_prelu" for m in "abc"} <= set(PAPER_SCALE)
    assert (Path(CONFIG_DIR) / "table7_ensemble.yaml").is_file()
    assert (Path(CONFIG_DIR) / "table7_ensemble_mini.yaml").is_file()


@pytest.mark.parametrize("name", STUDIES)
def test_every_paper_reference_resolves(name: str) -> None:
    """paper_reference holds only {table, row} or {figure}: the numbers live in paper_results alone."""
    ref = compose_experiment(name).paper_reference
    assert set(ref) in ({"table", "row"}, {"figure"}), dict(ref)
    resolved = resolve_reference(ref)
    if "table" in ref:
        cfg = compose_experiment(name)
        assert (resolved.model, resolved.act) == (cfg.model.name.value, cfg.model.act.value)


# Every set of runs the paper compares (and their mini twins): one schedule per set. Figs. 2-3 compare
# inits within one experiment (a sweep), so they share its schedule by construction.
COMPARISONS = {
    "table2": [f"table2_net14_{act}" for act in ("relu", "prelu_shared", "prelu")],
    "tables4-7": [
        "table4_model_a_relu",
        "table4_model_a_prelu",
        "paper_model_a",
        "paper_model_b",
        "paper_model_c",
    ]
    + [f"table{t}_model_{m}_prelu" for t in (5, 6) for m in "abc"],
}


@pytest.mark.parametrize("scale", ["paper", "mini"])
@pytest.mark.parametrize("comparison", ["table2", "tables4-7"])
def test_compared_runs_share_one_fixed_schedule(comparison: str, scale: str) -> None:
    names = (
        [n for n in COMPARISONS[comparison] if not n.startswith("paper_")]
        if scale == "mini"
        else COMPARISONS[comparison]
    )
    names = [f"{n}_mini" for n in names] if scale == "mini" else names
    schedules = set()
    for name in names:
        cfg = compose_experiment(name)
        schedules.add((cfg.sched.name.value, tuple(cfg.sched.milestones), cfg.sched.factor, cfg.train.epochs))
    assert len(schedules) == 1, schedules
    assert next(iter(schedules))[0] == "milestones"


@pytest.mark.parametrize("name", PAPER_SCALE)
def test_paper_scale_runs_use_the_papers_setting(name: str) -> None:
    cfg = compose_experiment(name)
    assert cfg.data.name.value == "imagenet" and cfg.model.num_classes == 1000 and cfg.model.width == 1.0
    assert (
        cfg.model.input_size == 224
        and cfg.train.batch_size == 128
        and cfg.optim.momentum_form.value == "caffe"
    )
    if name.startswith("fig"):
        assert cfg.train.val_max_images == 3000 and cfg.model.act.value == "relu"
        assert cfg.eval.protocol.value == "center"


@pytest.mark.parametrize("name", PAPER_SCALE)
def test_each_study_has_a_mini_twin_making_the_same_comparison(name: str) -> None:
    paper, mini = compose_experiment(name), compose_experiment(f"{name}_mini")
    assert mini.experiment_name == f"{name}_mini"
    assert mini.data.name.value == "synthetic" and mini.train.device == "cpu"
    for key in ("name", "act", "init"):
        assert mini.model[key] == paper.model[key], key
    assert mini.eval.protocol == paper.eval.protocol and list(mini.eval.scales) == list(paper.eval.scales)
    assert mini.paper_reference == paper.paper_reference
    assert mini.model.num_classes == mini.data.synthetic_classes
    # Enough validation images that a finding's interval is not all test-set noise (±3 points at 50 %).
    assert mini.data.synthetic_classes * mini.data.synthetic_val_per_class >= 1000


@pytest.mark.parametrize("name", ["fig2_model_b", "fig3_deep30"])
def test_the_init_minis_keep_the_paper_sizes_fc_gain(name: str) -> None:
    """std * sqrt(fan-in) of each fc layer equals the paper-size net's, so the mini head passes the
    signal through as the paper's does and only the convs' init differs between He and Xavier."""
    gains = []
    for cfg in (compose_experiment(name), compose_experiment(f"{name}_mini")):
        with torch.device("meta"):
            head = build_model(cfg.model).head
        stds = list(cfg.model.fc_init_std or (0.01, 0.01, 0.001))
        fans = [head.fc1.in_features, head.fc2.in_features, head.fc3.in_features]
        gains.append([std * fan**0.5 for std, fan in zip(stds, fans, strict=True)])
    assert gains[1] == pytest.approx(gains[0], rel=2e-3)
