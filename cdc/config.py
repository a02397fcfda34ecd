"""Load, interpolate and validate ``pipelines.yaml``.

``load_config(path)`` returns a ``Config`` or raises ``ConfigError`` listing every
problem with its key path (``pipelines.orders.sinks[0].path: required``).  Component
options are checked against the component's constructor (see ``cdc.schema``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ConfigProblem
from .interpolate import interpolate

__all__ = ["Config", "SourceSpec", "PipelineSpec", "SinkSpec", "Component", "Context",
           "RetryOptions", "load_config", "parse_config"]


@dataclass
class Context:
    """What cdc hands a component besides its options (parameter ``context``)."""

    config_dir: Path
    source: str = ""
    pipeline: str = ""
    name: str = ""

    def resolve_path(self, path: str | os.PathLike) -> Path:
        """Relative paths in a config are relative to the config file's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.config_dir / p


@dataclass
class RetryOptions:
    max_attempts: int = 0          # 0: retry for ever
    initial_backoff: float = 0.5   # seconds
    max_backoff: float = 30.0


@dataclass
class Component:
    type: str
    factory: Any                   # the class or callable that builds it
    options: dict
    path: str                      # key path, for messages
    context: Context

    def build(self) -> Any:
        return build_component(self.factory, self.options, self.context)


@dataclass
class SinkSpec(Component):
    on_error: str = "retry"
    retry: RetryOptions = field(default_factory=RetryOptions)
    batch_size: int = 1000
    dead_letter: Component | None = None


@dataclass
class SourceSpec(Component):
    tables: list[str] = field(default_factory=list)
    checkpoint: Component | None = None
    max_in_flight_events: int = 4096
    max_in_flight_bytes: int = 256 * 1024 * 1024
    checkpoint_interval: float = 1.0


@dataclass
class PipelineSpec:
    name: str
    source: str
    tables: list[str] | None
    transforms: list[Component]
    sinks: list[SinkSpec]
    path: str
    on_error: str = "stop"                  # transform errors: stop | skip | dead_letter
    dead_letter: Component | None = None


@dataclass
class Config:
    path: Path
    sources: dict[str, SourceSpec]
    pipelines: dict[str, PipelineSpec]
    metrics_listen: str | None = None   # ``metrics: {listen: host:port}``
    state_dir: Path | None = None       # lock and status files (default: <config dir>/state)

    def pipelines_of(self, source: str) -> list[PipelineSpec]:
        return [p for p in self.pipelines.values() if p.source == source]


def build_component(factory: Any, options: dict, context: Context) -> Any:
    if isinstance(factory, type) or options or _wants_context(factory):
        kwargs = dict(options)
        if _wants_context(factory):
            kwargs["context"] = context
        return factory(**kwargs)
    return factory  # a plain function used as it is


def _wants_context(factory: Any) -> bool:
    try:
        target = factory.__init__ if isinstance(factory, type) else factory
        return "context" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


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
    from .config_layout import read_layout  # it builds the specs defined above
    sources, pipelines, listen, state_dir = read_layout(raw, path.resolve().parent, problems)
    if problems:
        raise ConfigError(problems, str(path))
    return Config(path, sources, pipelines, listen, state_dir)
