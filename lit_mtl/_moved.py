"""Old import paths that keep working after a move: a module's ``__getattr__`` that finds each
moved name in its new module, with a ``DeprecationWarning`` naming the new path."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def moved_names(
    old: str, new: str | Mapping[str, Iterable[str]], names: Iterable[str] = ()
) -> Callable[[str], Any]:
    """``__getattr__`` for module ``old`` whose ``names`` now live in module ``new`` (or, with a
    mapping ``{new module: names}``, each in its own new module)."""
    homes = {n: mod for mod, ns in new.items() for n in ns} if isinstance(new, Mapping) else {}
    if isinstance(new, str):
        homes = dict.fromkeys(names, new)

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        home = homes[name]
        warnings.warn(
            f"{old}.{name} moved to {home}.{name}; the old path will be removed in a later release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(home), name)

    return __getattr__
