"""The one way the tests compose a command's config (conftest's `compose_train` fixture wraps it)."""

from __future__ import annotations

import copy

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from delving.config import register_all
from delving.config_files import config_dir

# Hydra reads and merges every YAML file of the defaults list at each compose (about 0.3 s on 2 cores), and
# the suite composes the same experiments again and again: each (folder, config, overrides) is composed once
# per worker, and every caller gets its own copy. The config files do not change during a session.
_composed: dict[tuple[str, str | None, tuple[str, ...]], DictConfig] = {}


def compose_config(
    overrides: list[str] | tuple[str, ...] = (), config_name: str | None = "train"
) -> DictConfig:
    """A command's composed config (no Hydra run config), as the command would see it with `overrides`."""
    folder = str(config_dir())
    key = (folder, config_name, tuple(overrides))
    register_all()  # cheap once filled; a test may have swapped in a new ConfigStore
    if key not in _composed:
        with initialize_config_dir(config_dir=folder, version_base="1.3"):
            _composed[key] = compose(config_name=config_name, overrides=list(overrides))
    return copy.deepcopy(_composed[key])
