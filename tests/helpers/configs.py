"""The one way the tests compose a command's config (conftest's `compose_train` fixture wraps it)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from delving.config import register_all
from delving.config_files import config_dir


def compose_config(
    overrides: list[str] | tuple[str, ...] = (), config_name: str | None = "train"
) -> DictConfig:
    """A command's composed config (no Hydra run config), as the command would see it with `overrides`."""
    register_all()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))
