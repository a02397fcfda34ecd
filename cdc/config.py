"""Load, interpolate and validate ``pipelines.yaml``.

``load_config(path)`` returns a ``Config`` or raises ``ConfigError`` listing every
problem with its key path (``pipelines.orders.sinks[0].path: required``).  Component
options are checked against the component's constructor (see ``cdc.schema``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import plugins
from .errors import ConfigError, ConfigProblem
from .interpolate import interpolate
from .schema import check_value, validate_options
from .secrets import redact, secrets_in

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
    max_in_flight_events: int = 10_000
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


# ---- the YAML layout -------------------------------------------------------------

_SOURCE_KEYS = {"type": str, "checkpoint": dict,
                "max_in_flight_events": int, "max_in_flight_bytes": int,
                "checkpoint_interval": float}
_SINK_KEYS = {"type": str, "name": str, "batch_size": int, "retry": RetryOptions, "dead_letter": dict,
              "on_error": Literal["retry", "dead_letter", "skip", "stop"]}
_PIPELINE_KEYS = ("source", "tables", "transforms", "sinks", "on_error", "dead_letter")
_PIPELINE_ON_ERROR = Literal["stop", "skip", "dead_letter"]
_TOP_KEYS = ("sources", "pipelines", "metrics", "state_dir")


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
    _unknown(raw, _TOP_KEYS, "", problems)
    directory = path.resolve().parent
    sources = {}
    for name, spec in _mapping(raw, "sources", "", problems).items():
        sources[name] = _source(name, spec, directory, problems)
    pipelines = {}
    for name, spec in _mapping(raw, "pipelines", "", problems).items():
        pipelines[name] = _pipeline(name, spec, sources, directory, problems)
    listen, state_dir = _ops_keys(raw, directory, problems)
    if problems:
        raise ConfigError(problems, str(path))
    return Config(path, sources, pipelines, listen, state_dir)


def _ops_keys(raw: dict, directory: Path, problems: list[ConfigProblem]) -> tuple[str | None, Path]:
    """``metrics: {listen: 127.0.0.1:9400}`` and ``state_dir`` (lock and status files)."""
    listen = None
    metrics = raw.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            problems.append(ConfigProblem("metrics", "expected a mapping such as {listen: 127.0.0.1:9400}"))
        else:
            _unknown(metrics, ("listen",), "metrics", problems)
            listen = metrics.get("listen")
            host, _, port = str(listen).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                problems.append(ConfigProblem("metrics.listen", f"expected host:port, got {listen!r}"))
                listen = None
    state = raw.get("state_dir", "state")
    if not isinstance(state, str) or not state:
        problems.append(ConfigProblem("state_dir", "expected a directory path"))
        state = "state"
    state_dir = Path(state).expanduser()
    return listen, state_dir if state_dir.is_absolute() else directory / state_dir


def _mapping(raw: dict, key: str, path: str, problems: list[ConfigProblem]) -> dict:
    sub = f"{path}.{key}" if path else key
    value = raw.get(key)
    if value is None:
        problems.append(ConfigProblem(sub, "required"))
        return {}
    if not isinstance(value, dict) or not value:
        problems.append(ConfigProblem(sub, "expected a mapping of names to definitions"))
        return {}
    return value


def _unknown(raw: dict, known: Any, path: str, problems: list[ConfigProblem]) -> None:
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(str(key), list(known), n=1)
            sub = f"{path}.{key}" if path else str(key)
            problems.append(ConfigProblem(sub, f"unknown key (did you mean {hint[0]!r}?)" if hint
                                          else f"unknown key (expected one of: {', '.join(known)})"))


def _component(kind: str, builtins: dict[str, str], raw: Any, path: str, context: Context,
               problems: list[ConfigProblem], common: Mapping[str, Any] = {}
               ) -> tuple[Component | None, dict]:
    """Resolve ``raw['type']`` and validate the options; ``common`` keys are cdc's own."""
    if not isinstance(raw, dict):
        problems.append(ConfigProblem(path, "expected a mapping with a type"))
        return None, {}
    type_name = raw.get("type")
    if not isinstance(type_name, str):
        problems.append(ConfigProblem(f"{path}.type", "required"))
        return None, {}
    try:
        factory = plugins.load(kind, type_name, builtins, str(context.config_dir))
    except plugins.PluginNotFound as exc:
        problems.append(ConfigProblem(f"{path}.type", str(exc)))
        return None, {}
    extra = {k: check_value(t, raw[k], f"{path}.{k}", problems)
             for k, t in common.items() if k in raw and k != "type"}
    ignore = frozenset(common) | {"type"}
    if _takes_options(factory):
        options = validate_options(factory, raw, path, problems, ignore=ignore)
    else:
        options = {}
        _unknown({k: v for k, v in raw.items() if k not in ignore}, (), path, problems)
    return Component(type_name, factory, options, path, context), extra


def _takes_options(factory: Any) -> bool:
    """Classes and factories take options; a plain ``fn(event)`` takes none."""
    if isinstance(factory, type):
        return True
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return not (len(params) == 1 and "context" not in params)


def _source(name: str, raw: Any, directory: Path, problems: list[ConfigProblem]) -> SourceSpec | None:
    from .checkpoints import CHECKPOINTS
    from .sources import SOURCES
    path = f"sources.{name}"
    ctx = Context(directory, source=name, name=name)
    before = len(problems)
    comp, extra = _component("sources", SOURCES, raw, path, ctx, problems, _SOURCE_KEYS)
    if comp is None:
        return None
    source_ok = len(problems) == before
    qualify = getattr(comp.factory, "qualify_table", None)
    tables = [qualify(t, comp.options) if qualify else t for t in comp.options.get("tables", [])]
    if "tables" in comp.options:
        comp.options["tables"] = tables
    checkpoint = None
    if "checkpoint" not in raw:
        problems.append(ConfigProblem(f"{path}.checkpoint", "required (e.g. {type: file, path: state/%s.json})" % name))
    else:
        before = len(problems)
        checkpoint, _ = _component("checkpoints", CHECKPOINTS, raw["checkpoint"], f"{path}.checkpoint",
                                   Context(directory, source=name, name="checkpoint"), problems)
        if checkpoint is not None and len(problems) == before:
            _builds(checkpoint, problems)
    spec = SourceSpec(comp.type, comp.factory, comp.options, path, ctx, tables=tables, checkpoint=checkpoint)
    for key in ("max_in_flight_events", "max_in_flight_bytes", "checkpoint_interval"):
        if key in extra:
            setattr(spec, key, extra[key])
    _at_least(spec, ("max_in_flight_events", "max_in_flight_bytes"), 1, path, problems)
    _at_least(spec, ("checkpoint_interval",), 0, path, problems)
    if source_ok:
        _builds(spec, problems)
    return spec


def _at_least(spec: Any, keys: tuple[str, ...], minimum: float, path: str,
              problems: list[ConfigProblem]) -> None:
    for key in keys:
        value = getattr(spec, key)
        if isinstance(value, (int, float)) and value < minimum:
            problems.append(ConfigProblem(f"{path}.{key}", f"must be at least {minimum} (got {value})"))


def _pipeline(name: str, raw: Any, sources: dict, directory: Path,
              problems: list[ConfigProblem]) -> PipelineSpec:
    from .sinks import SINKS
    from .transforms import TRANSFORMS
    path = f"pipelines.{name}"
    if not isinstance(raw, dict):
        problems.append(ConfigProblem(path, "expected a mapping with source and sinks"))
        return PipelineSpec(name, "", None, [], [], path)
    _unknown(raw, _PIPELINE_KEYS, path, problems)
    source = raw.get("source")
    tables = None
    if not isinstance(source, str):
        problems.append(ConfigProblem(f"{path}.source", "required"))
    elif source not in sources:
        problems.append(ConfigProblem(f"{path}.source", f"no source named {source!r} "
                                      f"(sources: {', '.join(sources) or 'none'})"))
    if "tables" in raw:
        tables = check_value(list[str], raw["tables"], f"{path}.tables", problems)
        spec = sources.get(source)
        if spec is not None and isinstance(tables, list):
            qualify = getattr(spec.factory, "qualify_table", None)
            tables = [qualify(t, spec.options) if qualify else t for t in tables]
            for i, t in enumerate(tables):
                if spec.tables and t not in spec.tables:
                    problems.append(ConfigProblem(f"{path}.tables[{i}]", f"{t} is not among the tables of "
                                                  f"source {source} ({', '.join(spec.tables)})"))
    transforms = []
    for i, t in enumerate(_list(raw, "transforms", path, problems, required=False)):
        ctx = Context(directory, source=source or "", pipeline=name, name=f"transforms[{i}]")
        before = len(problems)
        comp, _ = _component("transforms", TRANSFORMS, t, f"{path}.transforms[{i}]", ctx, problems)
        if comp is not None and len(problems) == before and _builds(comp, problems):
            transforms.append(comp)
    sinks = []
    for i, s in enumerate(_list(raw, "sinks", path, problems, required=True)):
        sinks.extend(_sink(s, f"{path}.sinks[{i}]", name, source or "", i, directory, problems))
    spec = PipelineSpec(name, source or "", tables, transforms, sinks, path)
    if "on_error" in raw:
        spec.on_error = check_value(_PIPELINE_ON_ERROR, raw["on_error"], f"{path}.on_error", problems)
    if "dead_letter" in raw:
        ctx = Context(directory, source=source or "", pipeline=name, name=f"{name}.dead_letter")
        spec.dead_letter, _ = _component("sinks", SINKS, raw["dead_letter"], f"{path}.dead_letter",
                                         ctx, problems)
    elif spec.on_error == "dead_letter":
        problems.append(ConfigProblem(f"{path}.dead_letter", "required when on_error is dead_letter"))
    return spec


def _sink(raw: Any, path: str, pipeline: str, source: str, index: int, directory: Path,
          problems: list[ConfigProblem]) -> list[SinkSpec]:
    from .sinks import SINKS
    raw_name = raw.get("name") if isinstance(raw, dict) else None
    type_name = raw.get("type") if isinstance(raw, dict) else None
    label = raw_name if isinstance(raw_name, str) else f"{pipeline}.sinks[{index}]:{type_name}"
    ctx = Context(directory, source=source, pipeline=pipeline, name=label)
    before = len(problems)
    comp, extra = _component("sinks", SINKS, raw, path, ctx, problems, _SINK_KEYS)
    if comp is None:
        return []
    if len(problems) == before:
        _builds(comp, problems)
    spec = SinkSpec(comp.type, comp.factory, comp.options, path, ctx)
    for key in ("on_error", "retry", "batch_size"):
        if key in extra:
            setattr(spec, key, extra[key])
    if "batch_size" not in extra:
        spec.batch_size = getattr(comp.factory, "default_batch_size", spec.batch_size)
    if "dead_letter" in raw:
        dl_ctx = dataclasses.replace(ctx, name=f"{ctx.name}.dead_letter")
        before = len(problems)
        spec.dead_letter, _ = _component("sinks", SINKS, raw["dead_letter"], f"{path}.dead_letter",
                                         dl_ctx, problems)
        if spec.dead_letter is not None and len(problems) == before:
            _builds(spec.dead_letter, problems)
    if spec.on_error == "dead_letter" and "dead_letter" not in raw:
        problems.append(ConfigProblem(f"{path}.dead_letter", "required when on_error is dead_letter"))
    _at_least(spec, ("batch_size",), 1, path, problems)
    return [spec]


def _builds(comp: Component, problems: list[ConfigProblem]) -> bool:
    """Every component is built once while validating (constructors connect to
    nothing): a bad DSN, plugin reference or template is a config problem, reported
    with its key path and without the secrets it may contain."""
    secrets = secrets_in(comp.options)
    try:
        comp.build()
    except ConfigError as exc:
        problems.extend(ConfigProblem(f"{comp.path}.{p.path}" if p.path else comp.path,
                                      redact(p.message, secrets)) for p in exc.problems)
        return False
    except Exception as exc:  # a constructor or plugin factory that raised
        problems.append(ConfigProblem(comp.path, redact(f"invalid: {type(exc).__name__}: {exc}".strip(), secrets)))
        return False
    return True


def _list(raw: dict, key: str, path: str, problems: list[ConfigProblem], required: bool) -> list:
    value = raw.get(key)
    if value is None:
        if required:
            problems.append(ConfigProblem(f"{path}.{key}", "required"))
        return []
    if not isinstance(value, list) or (required and not value):
        problems.append(ConfigProblem(f"{path}.{key}", "expected a non-empty list" if required else "expected a list"))
        return []
    return value
