"""Find a component class by its YAML ``type``.

A ``type`` is one of: a built-in name (``file``), an installed plugin's name from the
entry-point group ``cdc.<kind>`` (``cdc.sinks``, ``cdc.transforms``, ...), or a
``module:attribute`` reference (the config file's directory is on ``sys.path``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

__all__ = ["load", "import_ref", "PluginNotFound"]


class PluginNotFound(LookupError):
    pass


def import_ref(ref: str, search_path: str | None = None) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted)."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise PluginNotFound(f"{ref!r} is not of the form module:function")
    if search_path and search_path not in sys.path:
        sys.path.insert(0, search_path)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginNotFound(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginNotFound(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def load(kind: str, type_name: str, builtins: dict[str, str], search_path: str | None = None) -> Any:
    """The class or callable named by ``type_name`` for ``kind`` (e.g. ``sinks``)."""
    if type_name in builtins:
        try:
            return import_ref(builtins[type_name])
        except PluginNotFound as exc:
            raise PluginNotFound(
                f"{type_name!r} needs an optional package: pip install 'cdc[all]' ({exc})"
            ) from exc
    if ":" in type_name:
        return import_ref(type_name, search_path)
    from importlib.metadata import entry_points  # slow to import; only plugins need it
    for ep in entry_points(group=f"cdc.{kind}"):
        if ep.name == type_name:
            return ep.load()
    known = sorted(builtins) + sorted(ep.name for ep in entry_points(group=f"cdc.{kind}"))
    raise PluginNotFound(f"unknown type {type_name!r} (known: {', '.join(known)})")
