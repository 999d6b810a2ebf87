"""Where the config files are, below every room: the entry points compose from there, preflight lists the
experiments there.

The YAML files live in the repository's top-level configs/ folder, which the package ships as
`delving.configs`: Hydra reads them as pkg://delving.configs from an editable install and from a wheel
alike. DELVING_CONFIG_DIR=/some/folder replaces them with a folder of one's own (same layout).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CONFIG_PACKAGE = "delving.configs"
CONFIG_DIR_ENV = "DELVING_CONFIG_DIR"


def config_path() -> str:
    """What @hydra.main reads: $DELVING_CONFIG_DIR as an absolute folder, else the package's configs."""
    override = os.environ.get(CONFIG_DIR_ENV)
    return str(Path(override).expanduser().resolve()) if override else f"pkg://{CONFIG_PACKAGE}"


def config_dir() -> Path:
    """The config files' folder on disk (for compose in tests and scripts, and for listing experiments)."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    spec = importlib.util.find_spec(CONFIG_PACKAGE)  # its folder, found without importing it (YAML, no code)
    assert spec is not None and spec.origin is not None, f"{CONFIG_PACKAGE} is not installed"
    return Path(spec.origin).resolve().parent
