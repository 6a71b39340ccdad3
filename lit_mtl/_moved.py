"""Old import paths that keep working after a move: a module's ``__getattr__`` that finds each
moved name in its new module, with a ``DeprecationWarning`` naming the new path."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any


def moved_names(old: str, new: str, names: Iterable[str]) -> Callable[[str], Any]:
    """``__getattr__`` for module ``old`` whose ``names`` now live in module ``new``."""
    known = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name not in known:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        warnings.warn(
            f"{old}.{name} moved to {new}.{name}; the old path will be removed in a later release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new), name)

    return __getattr__
