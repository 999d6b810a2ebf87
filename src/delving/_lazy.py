"""Packages that import their public names on first use (PEP 562).

The entry points import the config schemas (`delving.<room>.config`) at start-up, which runs the room's
`__init__`; eager imports there would load torchvision and timm before a wrong option is even reported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` that imports each name of `exports` (name -> module) when first asked for."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__
