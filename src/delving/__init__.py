"""delving: a reproduction of He et al., "Delving Deep into Rectifiers" (2015).

`import delving` is enough for `timm.create_model("delving_model_a")`: the nets are registered in timm's
registry as soon as timm is imported (at once if it already is). Importing timm here instead would add
seconds (it imports torchvision) to every command, even to one that only reports a wrong option.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType

__version__ = "0.1.0"


def _register_nets_in_timm() -> None:
    import delving.models.factory  # noqa: F401  (its import registers every net)


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Finds timm as usual, then registers delving's nets once timm's own module code has run."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # once; the lookup below then goes to the other finders
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            try:
                exec_module(module)
            finally:
                del loader.exec_module  # the loader is timm's own again
            _register_nets_in_timm()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "timm" in sys.modules:
    _register_nets_in_timm()
elif not any(isinstance(finder, _RegisterAfterTimm) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTimm())
