"""Config composition: every experiment and group option composes and builds; bad overrides name the key."""

from __future__ import annotations

import json
import re
from enum import Enum
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from delving.cli.common import CONFIG_DIR
from delving.data.config import validate as validate_data
from delving.engine.config import AppConfig, as_app_config
from delving.engine.trainer import config_to_dict
from delving.models import build_model

CONFIGS = Path(CONFIG_DIR)
GROUPS = ["model", "data", "optim", "sched", "eval", "logger", "launcher", "paths"]


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_composes_and_builds(experiment: str, compose_train) -> None:
    cfg = compose_train([f"experiment={experiment}"])
    validate_data(cfg.data)
    with torch.device("meta"):
        model = build_model(cfg.model)
    assert model.num_classes == cfg.model.num_classes
    assert cfg.train.batch_size > 0 and cfg.experiment_name == experiment


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_the_typed_config_keeps_the_checkpoints_dict(experiment: str, compose_train) -> None:
    """Typed once at the entry (as_app_config): the config the checkpoint stores is the same dict, in the same
    key order, as the composed DictConfig gave; the model built from either is the same net."""
    cfg = compose_train([f"experiment={experiment}"])
    typed = as_app_config(cfg)
    assert isinstance(typed, AppConfig) and isinstance(typed.model.name, Enum)
    assert json.dumps(config_to_dict(typed)) == json.dumps(config_to_dict(cfg))
    with torch.device("meta"):
        assert repr(build_model(typed.model)) == repr(build_model(cfg.model))


@pytest.mark.parametrize(
    "override", [f"{g}={p.stem}" for g in GROUPS for p in sorted((CONFIGS / g).glob("*.yaml"))]
)
def test_every_group_option_composes(override: str, compose_train) -> None:
    cfg = compose_train([override])
    group, option = override.split("=")
    if group == "model":
        assert cfg.model.name == option


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.act=tanh", r"model.act.*relu.*prelu.*prelu_shared.*leaky_relu"),
        ("model.init=orthogonal", r"he_fan_out.*he_fan_in.*xavier"),
        ("model=resnet50", r"model.*resnet50"),
        ("train.epochs=many", r"train.epochs"),
        ("train.epoch=3", r"train.epoch"),
        ("optim.momentum_form=adam", r"caffe.*pytorch"),
    ],
)
def test_bad_overrides_name_the_key_and_the_allowed_values(
    override: str, expected: str, compose_train
) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)) as error:
        compose_train([override])
    message = str(error.value) + str(error.value.__cause__)
    assert re.search(expected, message, flags=re.S), message


def test_hydras_repository_copies_share_the_store_and_loads_stay_independent(compose_train) -> None:
    """register_all lets Hydra's repository copies (one per compose, one per group `--help` lists) share the
    ConfigStore instead of copying every schema: a schema stored after a copy is found through it, and a node
    loaded through a copy and changed in place leaves the store's node as it was (Hydra's loads copy it)."""
    from hydra._internal.config_repository import CachingConfigRepository, ConfigRepository
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_store import ConfigStore

    compose_train([])  # register_all, as every compose does
    store = ConfigStore.instance()
    copied = CachingConfigRepository(ConfigRepository(create_config_search_path(CONFIG_DIR)))
    store.store(group="model", name="added_after_the_copy", node={"name": "model_a"})
    try:
        assert "added_after_the_copy" in copied.get_group_options("model")
    finally:
        del store.repo["model"]["added_after_the_copy.yaml"]
    loaded = copied.load_config("model/base_model").config
    loaded.width = 0.5
    assert loaded.width == 0.5 and store.load("model/base_model.yaml").node.width == 1.0


def test_the_tests_compose_once_per_config_and_hand_out_copies(compose_train) -> None:
    """helpers/configs.py keeps each composed config: a kept one equals a fresh compose, and a test that
    changes its copy changes nobody else's."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    overrides = ["experiment=table5_model_a_prelu", "train.batch_size=7"]
    first = compose_train(overrides)
    first.train.batch_size = 3
    first.model.width = 0.5
    kept = compose_train(overrides)
    with initialize_config_dir(config_dir=str(CONFIGS.resolve()), version_base="1.3"):
        fresh = compose(config_name="train", overrides=overrides)
    assert kept.train.batch_size == 7 and kept.model.width == fresh.model.width != 0.5
    assert OmegaConf.to_yaml(kept) == OmegaConf.to_yaml(fresh)
    assert OmegaConf.is_struct(kept) == OmegaConf.is_struct(fresh)


def test_register_all_fills_each_store_once() -> None:
    """Every compose calls register_all; a store already filled keeps its nodes, a new singleton is filled."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.singleton import Singleton

    from delving.config import register_all

    register_all()
    kept = ConfigStore.instance().repo["base_train.yaml"]
    register_all()
    assert ConfigStore.instance().repo["base_train.yaml"] is kept
    old = Singleton._instances.pop(ConfigStore)
    try:
        register_all()
        fresh = ConfigStore.instance()
        assert (
            fresh is not old and "base_train.yaml" in fresh.repo and "base_model.yaml" in fresh.repo["model"]
        )
    finally:
        Singleton._instances[ConfigStore] = old
        register_all()
