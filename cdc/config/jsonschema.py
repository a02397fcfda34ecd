"""The JSON Schema of ``pipelines.yaml`` (``cdc schema``), built from the same
constructor signatures that ``cdc validate`` checks, built-ins and installed plugins
alike.  Point an editor's YAML language server at it for completion and errors."""

from __future__ import annotations

import dataclasses
import enum
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal

from ..checkpoints import CHECKPOINTS
from ..sinks import SINKS
from ..sources import SOURCES
from ..transforms import TRANSFORMS
from . import registry
from .layout import PIPELINE_ON_ERROR, SINK_KEYS, SOURCE_KEYS, takes_options
from .options import parameters

__all__ = ["config_schema"]

#: ``${VAR}`` may stand for any scalar: such a string is checked after interpolation.
_INTERPOLATED = {"type": "string", "pattern": r"\$\{"}


def config_schema() -> dict[str, Any]:
    sources = _kind("sources", SOURCES, SOURCE_KEYS)
    checkpoints = _kind("checkpoints", CHECKPOINTS, {"type": str})
    for source in sources:
        source["properties"]["checkpoint"] = {"anyOf": checkpoints}
        source["required"].append("checkpoint")
    sinks = _kind("sinks", SINKS, SINK_KEYS)
    for sink in sinks:
        sink["properties"]["dead_letter"] = {"$ref": "#/$defs/sink"}
    transforms = _kind("transforms", TRANSFORMS, {"type": str})
    pipeline = {
        "type": "object", "additionalProperties": False, "required": ["source", "sinks"],
        "properties": {
            "source": {"type": "string"},
            "tables": {"type": "array", "items": {"type": "string"}},
            "transforms": {"type": "array", "items": {"anyOf": transforms}},
            "sinks": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/sink"}},
            "on_error": _annotation(PIPELINE_ON_ERROR),
            "dead_letter": {"$ref": "#/$defs/sink"},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "cdc pipelines",
        "type": "object",
        "additionalProperties": False,
        "required": ["sources", "pipelines"],
        "properties": {
            "sources": {"type": "object", "minProperties": 1, "additionalProperties": {"anyOf": sources}},
            "pipelines": {"type": "object", "minProperties": 1, "additionalProperties": pipeline},
            "metrics": {"type": "object", "additionalProperties": False,
                        "properties": {"listen": {"type": "string", "description": "host:port"}}},
            "state_dir": {"type": "string"},
        },
        "$defs": {"sink": {"anyOf": sinks}},
    }


def _kind(kind: str, builtins: dict[str, str], common: dict[str, Any]) -> list[dict]:
    """One object schema per type name: its ``type`` constant, cdc's own keys and the
    constructor's options.  A plugin that cannot be imported is left out."""
    from importlib.metadata import entry_points
    names = dict(builtins)
    names.update({ep.name: ep.value for ep in entry_points(group=f"cdc.{kind}")})
    out = []
    for name in sorted(names):
        try:
            factory = registry.load(kind, name, builtins)
        except registry.PluginNotFound:
            continue
        props: dict[str, Any] = {"type": {"const": name}}
        required = ["type"]
        props.update({k: _annotation(t) for k, t in common.items() if k != "type"})
        if takes_options(factory):
            try:
                params = parameters(factory)
            except (TypeError, ValueError):
                params = {}
            for pname, param in params.items():
                props[pname] = _annotation(param.annotation)
                if param.default is inspect.Parameter.empty:
                    required.append(pname)
                elif _plain(param.default):
                    props[pname]["default"] = param.default
        doc = inspect.getdoc(factory)
        schema = {"type": "object", "additionalProperties": False, "properties": props, "required": required}
        if doc:
            schema["description"] = doc.split("\n\n")[0]
        out.append(schema)
    return out


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _annotation(annotation: Any) -> dict[str, Any]:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_annotation(a) for a in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if annotation is type(None):
        return {"type": "null"}
    if origin is tuple and args and args[-1] is not Ellipsis:
        return {"type": "array", "prefixItems": [_annotation(a) for a in args],
                "minItems": len(args), "maxItems": len(args)}
    if origin in (list, tuple) or annotation in (list, tuple):
        items = _annotation(args[0]) if args else {}
        array = {"type": "array", "items": items}
        return {"anyOf": [array, items]} if args and args[0] is str else array
    if origin is dict or annotation is dict:
        return {"type": "object", "additionalProperties": _annotation(args[1]) if len(args) == 2 else {}}
    if dataclasses.is_dataclass(annotation):
        fields = parameters(annotation)
        return {"type": "object", "additionalProperties": False,
                "properties": {n: _annotation(p.annotation) for n, p in fields.items()}}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [m.value for m in annotation]}
    scalar = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(annotation)
    if scalar == "string" or (isinstance(annotation, type) and issubclass(annotation, Path)):
        return {"type": "string"}
    if scalar:
        return {"anyOf": [{"type": scalar}, _INTERPOLATED]}
    return {}
