"""Validate YAML options against a constructor's signature.

A component's ``__init__`` keyword arguments are its options: a parameter without a
default is required, the annotation gives the type, and any other key is an error
(a typo must never be ignored silently).  Supported annotations: ``str``, ``int``,
``float``, ``bool``, ``Any``, ``list[X]``, ``dict[str, X]``, ``Literal[...]``,
``X | None`` and dataclasses (validated recursively).  Strings from ``${VAR}``
interpolation are converted to ``int``/``float``/``bool`` where needed.

Parameters named in ``INJECTED`` (``context``) are supplied by cdc, not by YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from typing import Any, Literal

from .errors import ConfigProblem

__all__ = ["validate_options", "check_value", "INJECTED"]

INJECTED = frozenset({"context", "self"})
_EMPTY = inspect.Parameter.empty


def _parameters(target: Any) -> dict[str, inspect.Parameter]:
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
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
    sig = inspect.signature(func, eval_str=True)
    return {n: p for n, p in sig.parameters.items()
            if n not in INJECTED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def validate_options(target: Any, options: Any, path: str,
                     problems: list[ConfigProblem], ignore: frozenset[str] = frozenset()) -> dict:
    """Check ``options`` against ``target``'s parameters; return the converted options."""
    if not isinstance(options, dict):
        problems.append(ConfigProblem(path, f"expected a mapping, got {_kind(options)}"))
        return {}
    params = _parameters(target)
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
    if origin in (list, tuple) or annotation in (list, tuple):
        if isinstance(value, str) and (args and args[0] is str):
            value = [value]  # a single table name is a list of one
        if not isinstance(value, list):
            problems.append(ConfigProblem(path, f"expected a list, got {_kind(value)}"))
            return value
        item = args[0] if args else Any
        return [check_value(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            problems.append(ConfigProblem(path, f"expected a mapping, got {_kind(value)}"))
            return value
        item = args[1] if len(args) == 2 else Any
        return {k: check_value(item, v, f"{path}.{k}", problems) for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
    else:
        return value
    problems.append(ConfigProblem(path, f"expected {_name(annotation)}, got {_kind(value)}"))
    return value


def _name(annotation: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
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
