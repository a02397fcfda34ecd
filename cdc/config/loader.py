"""Load, interpolate and validate ``pipelines.yaml``.

``load_config(path)`` returns a ``Config`` or raises ``ConfigError`` listing every
problem with its key path (``pipelines.orders.sinks[0].path: required``).  Component
options are checked against the component's constructor (see ``cdc.config.options``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ConfigProblem
from .interpolate import interpolate
from .layout import read_layout
from .model import Config

__all__ = ["load_config", "parse_config"]


def load_config(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", str(path)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"not UTF-8 text: byte {data[exc.start]:#04x} at line {line}; save the file as UTF-8",
                          str(path)) from None
    import yaml  # here, not at the top: a process that only runs a parsed config skips it

    duplicates: list[ConfigProblem] = []
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _duplicate_keys(node, "", duplicates)
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: a position, no line
        raise ConfigError(f"not valid YAML at line {text.count(chr(10), 0, exc.position) + 1}: character "
                          f"{chr(exc.character)!r} is not allowed ({exc.reason})", str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", str(path)) from None
    return parse_config(raw, path, os.environ if env is None else env, duplicates)


def _duplicate_keys(node: Any, path: str, problems: list[ConfigProblem]) -> None:
    """YAML keeps the last of two equal keys silently; cdc calls it a mistake."""
    import yaml
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            sub = f"{path}.{name}" if path else name
            if name in seen:
                problems.append(ConfigProblem(sub, f"duplicate key (line {key.start_mark.line + 1}; the first is "
                                                   f"at line {seen[name]}): YAML would keep only the last"))
            else:
                seen[name] = key.start_mark.line + 1
            _duplicate_keys(value, sub, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicate_keys(item, f"{path}[{i}]", problems)


def parse_config(raw: Any, path: Path, env: Mapping[str, str],
                 problems: list[ConfigProblem] | None = None) -> Config:
    problems = list(problems or [])
    raw = interpolate(raw, env, problems)
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("", "the config must be a mapping with sources and pipelines")], str(path))
    sources, pipelines, listen, state_dir = read_layout(raw, path.resolve().parent, problems)
    if problems:
        raise ConfigError(problems, str(path))
    return Config(path, sources, pipelines, listen, state_dir)
