"""Optional client libraries, imported when a sink first needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import PermanentSinkError

__all__ = ["require"]


def require(module: str, sink: str, extra: str, package: str) -> ModuleType:
    """``module``, or a clear error naming the extra that installs ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise PermanentSinkError(f"the {sink} sink needs {package}: pip install 'cdc[{extra}]'") from None
