"""Optional dependencies: imported where used, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise an ImportError naming ``what`` needs it and the extra to install.

    >>> require("math", "none", "this example").sqrt(4.0)
    2.0
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ImportError(
            f"{what} needs the optional package {package!r}: pip install 'lit-mtl[{extra}]'"
        ) from err
