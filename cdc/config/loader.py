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
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", str(path)) from None
    import yaml  # here, not at the top: a process that only runs a parsed config skips it

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", str(path)) from None
    return parse_config(raw, path, os.environ if env is None else env)


def parse_config(raw: Any, path: Path, env: Mapping[str, str]) -> Config:
    problems: list[ConfigProblem] = []
    raw = interpolate(raw, env, problems)
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("", "the config must be a mapping with sources and pipelines")], str(path))
    sources, pipelines, listen, state_dir = read_layout(raw, path.resolve().parent, problems)
    if problems:
        raise ConfigError(problems, str(path))
    return Config(path, sources, pipelines, listen, state_dir)
