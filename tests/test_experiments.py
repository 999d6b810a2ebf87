"""The paper's studies as experiment files: paper numbers agree with paper_results, and every study has a
mini twin making the same comparison (tests/test_report.py trains the minis on tiny data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from delving.cli.common import CONFIG_DIR, register_resolvers
from delving.engine.config import register_configs
from delving.evaluation.paper_results import paper_table

register_configs()
register_resolvers()
EXPERIMENTS = Path(CONFIG_DIR) / "experiment"
STUDIES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml") if p.stem.startswith(("table", "fig")))
PAPER_SCALE = [s for s in STUDIES if not s.endswith("_mini")]
TABLE4_ROWS = {"s256": "s=256", "s384": "s=384", "s480": "s=480", "multiscale": "multi-scale"}


def compose_experiment(name: str, overrides: tuple[str, ...] = ()):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={name}", *overrides])


def test_every_study_of_the_issue_is_there() -> None:
    assert {"fig2_model_b", "fig3_deep30", "table4_model_a_relu", "table4_model_a_prelu"} <= set(PAPER_SCALE)
    assert {"table2_net14_relu", "table2_net14_prelu_shared", "table2_net14_prelu"} <= set(PAPER_SCALE)
    for table in ("table5", "table6"):
        assert {f"{table}_model_{m}_prelu" for m in "abc"} <= set(PAPER_SCALE)
    assert (Path(CONFIG_DIR) / "table7_ensemble.yaml").is_file()
    assert (Path(CONFIG_DIR) / "table7_ensemble_mini.yaml").is_file()


@pytest.mark.parametrize("name", [s for s in PAPER_SCALE if s.startswith("table")])
def test_paper_reference_numbers_are_the_papers(name: str) -> None:
    ref = compose_experiment(name).paper_reference
    rows = {row.label: row for row in paper_table(ref.table).rows}
    if ref.table == "table4":
        for key, numbers in ref.rows.items():
            row = rows[f"A, {ref.column}, {TABLE4_ROWS[key]}"]
            assert (numbers.top1_error, numbers.top5_error) == (row.top1, row.top5)
    else:
        assert (ref.top1_error, ref.top5_error) == (rows[ref.row].top1, rows[ref.row].top5)


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
