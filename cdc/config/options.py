"""Validate YAML options against a constructor's signature.

A component's ``__init__`` keyword arguments are its options: a parameter without a
default is required, the annotation gives the type, and any other key is an error
(a typo must never be ignored silently).  Supported annotations: ``str``, ``int``,
``float``, ``bool``, ``Any``, ``list[X]``, ``dict[str, X]``, ``Literal[...]``,
``X | None`` and dataclasses (validated recursively), ``tuple[X, ...]`` and ``tuple[X, Y]``, ``Path`` and
``Enum`` classes (from their value or name).  Strings from ``${VAR}`` interpolation
are converted to ``int``/``float``/``bool`` where needed; a float must be finite.
An annotation that cannot be resolved (a name imported only under ``TYPE_CHECKING``)
accepts any value.

Parameters named in ``INJECTED`` (``context``) are supplied by cdc, not by YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import inspect
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigProblem

__all__ = ["validate_options", "check_value", "parameters", "INJECTED"]

INJECTED = frozenset({"context", "self"})
_EMPTY = inspect.Parameter.empty


def parameters(target: Any) -> dict[str, inspect.Parameter]:
    """The YAML options of a class, factory or dataclass, with resolved annotations."""
    if dataclasses.is_dataclass(target):
        hints = _hints(target)
        out = {}
        for f in dataclasses.fields(target):
            default = f.default
            if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            out[f.name] = inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY,
                default=_EMPTY if default is dataclasses.MISSING else default,
                annotation=hints.get(f.name, Any))
        return out
    func = target.__init__ if inspect.isclass(target) else target
    sig = inspect.signature(func)
    scope = getattr(inspect.unwrap(func), "__globals__", {})
    return {n: p.replace(annotation=_resolve(p.annotation, scope)) for n, p in sig.parameters.items()
            if n not in INJECTED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _resolve(annotation: Any, scope: dict) -> Any:
    """A string annotation evaluated where it was written; ``Any`` if it names something
    that exists only for type checkers."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, dict(scope))  # noqa: S307 - the plugin's own annotation text
    except Exception:
        return Any


def _hints(cls: object) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:
        scope = vars(__import__(cls.__module__, fromlist=["_"]))
        return {k: _resolve(v, scope) for k, v in getattr(cls, "__annotations__", {}).items()}


def validate_options(target: Any, options: Any, path: str,
                     problems: list[ConfigProblem], ignore: frozenset[str] = frozenset()) -> dict:
    """Check ``options`` against ``target``'s parameters; return the converted options."""
    if not isinstance(options, dict):
        problems.append(ConfigProblem(path, f"expected a mapping, got {_kind(options)}"))
        return {}
    params = parameters(target)
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in ignore:
            continue
        sub = f"{path}.{key}" if path else str(key)
        param = params.get(key)
        if param is None:
            known = sorted(set(params) | ignore)
            hint = difflib.get_close_matches(str(key), known, n=1)
            msg = f"unknown key (did you mean {hint[0]!r}?)" if hint else \
                f"unknown key (expected one of: {', '.join(known)})"
            problems.append(ConfigProblem(sub, msg))
            continue
        out[key] = check_value(param.annotation, value, sub, problems)
    for name, param in params.items():
        if name not in options and param.default is _EMPTY:
            problems.append(ConfigProblem(f"{path}.{name}" if path else name, "required"))
    return out


def check_value(annotation: Any, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    """Check one value against a type annotation; return it converted."""
    if annotation is _EMPTY or annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return check_value(options[0], value, path, problems)
        for option in options:  # first that fits without a problem
            trial: list[ConfigProblem] = []
            converted = check_value(option, value, path, trial)
            if not trial:
                return converted
        problems.append(ConfigProblem(path, f"expected {_name(annotation)}, got {_kind(value)}"))
        return value
    if origin is Literal:
        if value not in args:
            problems.append(ConfigProblem(
                path, f"must be one of {', '.join(map(str, args))} (got {value!r})"))
        return value
    if (origin is tuple or annotation is tuple) and args and args[-1] is not Ellipsis:
        if not isinstance(value, list) or len(value) != len(args):
            problems.append(ConfigProblem(path, f"expected a list of {len(args)} items, got {_kind(value)}"))
            return value
        return tuple(check_value(a, v, f"{path}[{i}]", problems) for i, (a, v) in enumerate(zip(args, value)))
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, str) and (args and args[0] is str):
            value = [value]  # a single table name is a list of one
        if not isinstance(value, list):
            problems.append(ConfigProblem(path, f"expected a list, got {_kind(value)}"))
            return value
        item = args[0] if args else Any
        items = [check_value(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or annotation is tuple else items
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            problems.append(ConfigProblem(path, f"expected a mapping, got {_kind(value)}"))
            return value
        item = args[1] if len(args) == 2 else Any
        return {k: check_value(item, v, f"{path}.{k}", problems) for k, v in value.items()}
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        return annotation(**validate_options(annotation, value, path, problems))
    return _scalar(annotation, value, path, problems)


def _scalar(annotation: Any, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
    elif annotation is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        for member in annotation:
            if value == member.value or value == member.name or value is member:
                return member
        problems.append(ConfigProblem(path, f"must be one of {', '.join(str(m.value) for m in annotation)} "
                                            f"(got {value!r})"))
        return value
    elif isinstance(annotation, type) and issubclass(annotation, Path):
        if isinstance(value, (str, Path)) and str(value):
            return Path(value)
    elif isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
    else:
        return value
    problems.append(ConfigProblem(path, f"expected {_name(annotation)}, got {_kind(value)}"))
    return value


def _name(annotation: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a finite number", bool: "true or false",
             Path: "a path"}
    if annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
