"""Lazy re-exports for package ``__init__`` files (PEP 562), written once.

A package whose ``__init__`` would otherwise import every submodule up front (and with
them codecs, threads, SQLite) names each public name's submodule in a table instead; the
submodule is imported the first time the name is asked for, and the value is then kept
in the package's namespace, so later lookups do not come back here. Start-up time is part
of every command's cost: ``imgpipe --version`` should not load the pipeline.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` comes from the module
    ``where[name]``: a submodule (``"base"`` or ``".base"``) or, with a dot inside, an
    absolute module name (``"imgpipe.events"``).

    Raises AttributeError for a name the table does not hold, as a module would.
    """

    def __getattr__(name: str) -> Any:
        sub = where.get(name)
        if sub is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = sub if sub.startswith(".") or "." in sub else f".{sub}"
        value = getattr(import_module(target, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
