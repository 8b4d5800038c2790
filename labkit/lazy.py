"""Package attributes imported on first use, so that ``import labkit`` (and the ``labkit`` command) start fast."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: each name of ``exports`` is read from the module it maps to
    when first asked for (PEP 562), then kept in the package's namespace; any other name is tried as a
    submodule, as if the package had imported it."""
    def __getattr__(name: str):
        if name not in exports:  # a submodule not imported yet (``labkit.paths`` after ``import labkit``)
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as error:
                if error.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
