"""The validated config: one spec per source, pipeline and sink, and the ``Context``
handed to components.  Built by ``cdc.config.loader``."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Config", "SourceSpec", "PipelineSpec", "SinkSpec", "Component", "Context",
           "RetryOptions", "build_component"]


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
    max_batches_in_flight: int = 8          # for a ``Pipelined`` sink; 1: one batch at a time
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
    state_dir: Path = Path("state")     # lock and status files (the loader makes it <config dir>/state)

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
        target = factory.__init__ if inspect.isclass(factory) else factory
        return "context" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
