"""The one way the tests compose a command's config (conftest's `compose_train` fixture wraps it)."""

from __future__ import annotations

import copy
import functools

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from delving.config import register_all
from delving.config_files import config_dir


def compose_config(
    overrides: list[str] | tuple[str, ...] = (), config_name: str | None = "train"
) -> DictConfig:
    """A command's composed config (no Hydra run config), as the command would see it with `overrides`."""
    register_all()  # cheap once filled; a test may have swapped in a new ConfigStore
    return copy.deepcopy(_composed(str(config_dir()), config_name, tuple(overrides)))


# Hydra reads and merges every YAML file of the defaults list at each compose (about 0.3 s on 2 cores), and
# the suite composes the same experiments again and again: each (folder, config, overrides) is composed once
# per worker, and every caller gets its own copy. The config files do not change during a session.
@functools.cache
def _composed(folder: str, config_name: str | None, overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=folder, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))
