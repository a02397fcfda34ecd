"""The layout of ``pipelines.yaml``: walk the raw YAML tree, check every key, and
build the specs of ``cdc.config.model`` (problems are collected with their key paths)."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

from ..abc import DefaultBatchSize, SlotOwner, TableNaming
from ..checkpoints import CHECKPOINTS
from ..errors import ConfigError, ConfigProblem
from ..observe.secrets import redact, secrets_in
from ..sinks import SINKS
from ..sources import SOURCES
from ..transforms import TRANSFORMS
from . import registry
from .model import Component, Context, PipelineSpec, RetryOptions, SinkSpec, SourceSpec
from .options import check_value, validate_options

__all__ = ["read_layout"]

SOURCE_KEYS = {"type": str, "checkpoint": dict,
                "max_in_flight_events": int, "max_in_flight_bytes": int,
                "checkpoint_interval": float}
SINK_KEYS = {"type": str, "name": str, "batch_size": int, "max_batches_in_flight": int,
              "retry": RetryOptions, "dead_letter": dict,
              "on_error": Literal["retry", "dead_letter", "skip", "stop"]}
_PIPELINE_KEYS = ("source", "tables", "transforms", "sinks", "on_error", "dead_letter")
PIPELINE_ON_ERROR = Literal["stop", "skip", "dead_letter"]
_TOP_KEYS = ("sources", "pipelines", "metrics", "state_dir")



def read_layout(raw: dict, directory: Path, problems: list[ConfigProblem]
                ) -> tuple[dict[str, SourceSpec], dict[str, PipelineSpec], str | None, Path]:
    """(sources, pipelines, metrics listen address, state directory)."""
    _unknown(raw, _TOP_KEYS, "", problems)
    sources: dict[str, SourceSpec | None] = {}
    for name, spec in _mapping(raw, "sources", "", problems).items():
        sources[name] = _source(name, spec, directory, problems)
    pipelines: dict[str, PipelineSpec] = {}
    for name, spec in _mapping(raw, "pipelines", "", problems).items():
        pipelines[name] = _pipeline(name, spec, sources, directory, problems)
    listen, state_dir = _ops_keys(raw, directory, problems)
    _shared_positions({n: s for n, s in sources.items() if s is not None}, problems)
    _sink_names(pipelines, problems)
    # a source is None only where a problem was recorded, and then the loader raises
    return cast("dict[str, SourceSpec]", sources), pipelines, listen, state_dir


def _shared_positions(sources: dict[str, SourceSpec], problems: list[ConfigProblem]) -> None:
    """Two sources on one checkpoint (or one replication slot) would resume from each
    other's positions and skip their own changes."""
    checkpoints: dict[Any, str] = {}
    slots: dict[str, str] = {}
    for name, spec in sources.items():
        if spec.checkpoint is not None:
            same = checkpoints.setdefault(_checkpoint_identity(spec.checkpoint), name)
            if same != name:
                problems.append(ConfigProblem(f"{spec.path}.checkpoint", f"the same checkpoint as source {same}: "
                                              f"each source needs its own (another path, or another table)"))
        try:
            source = spec.build()
        except Exception:
            continue  # already reported
        if isinstance(source, SlotOwner):
            same = slots.setdefault(source.slot, name)
            if same != name:
                problems.append(ConfigProblem(f"{spec.path}.slot", f"slot {source.slot} is also the slot of "
                                              f"source {same}: each source needs its own"))


def _sink_names(pipelines: dict[str, PipelineSpec], problems: list[ConfigProblem]) -> None:
    """A sink's name is its identity: in metrics and status, and for a database mirror the rows
    of its position table (two mirrors of one name would move each other's position)."""
    seen: dict[str, str] = {}
    for pipeline in pipelines.values():
        for spec in pipeline.sinks:
            first = seen.setdefault(spec.context.name, spec.path)
            if first != spec.path:
                problems.append(ConfigProblem(f"{spec.path}.name", f"{spec.context.name!r} is also the name of "
                                                                   f"{first}: each sink needs its own"))


def _checkpoint_identity(comp: Component) -> tuple:
    """Where a store keeps its position: a file store's resolved path.  Other stores keep
    one row per source name (the ``postgres`` store), so their identity includes it."""
    options = dict(comp.options)
    if isinstance(options.get("path"), str):
        return ("path", str(comp.context.resolve_path(options["path"]).resolve()))
    return (comp.type, comp.context.source, tuple(sorted((k, repr(v)) for k, v in options.items())))


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
    named = {name: spec for name, spec in value.items() if isinstance(name, str) and name}
    for name in value:
        if name not in named:  # e.g. a YAML anchor written as a key (`&a:`) names it null
            problems.append(ConfigProblem(sub, f"a name must be text, got {name!r} (quote it, or remove the "
                                               f"& or * in front of it)"))
    return named


def _unknown(raw: dict, known: Any, path: str, problems: list[ConfigProblem]) -> None:
    for key in raw:
        if key not in known:
            hint = difflib.get_close_matches(str(key), list(known), n=1)
            sub = f"{path}.{key}" if path else (str(key) or repr(key))  # an empty key is named too
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
        factory = registry.load(kind, type_name, builtins, str(context.config_dir))
    except registry.PluginNotFound as exc:
        problems.append(ConfigProblem(f"{path}.type", str(exc)))
        return None, {}
    extra = {k: check_value(t, raw[k], f"{path}.{k}", problems)
             for k, t in common.items() if k in raw and k != "type"}
    ignore = frozenset(common) | {"type"}
    if takes_options(factory):
        options = validate_options(factory, raw, path, problems, ignore=ignore)
    else:
        options = {}
        _unknown({k: v for k, v in raw.items() if k not in ignore}, (), path, problems)
    return Component(type_name, factory, options, path, context), extra


def takes_options(factory: Any) -> bool:
    """Classes and factories take options; a plain ``fn(event)`` takes none."""
    if isinstance(factory, type):
        return True
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return not (len(params) == 1 and "context" not in params)


def qualified(factory: Any, table: str, options: dict) -> str:
    """A table name as the source names it (``orders`` -> ``public.orders``)."""
    return factory.qualify_table(table, options) if isinstance(factory, TableNaming) else table


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _source(name: str, raw: Any, directory: Path, problems: list[ConfigProblem]) -> SourceSpec | None:
    path = f"sources.{name}"
    ctx = Context(directory, source=name, name=name)
    before = len(problems)
    comp, extra = _component("sources", SOURCES, raw, path, ctx, problems, SOURCE_KEYS)
    if comp is None:
        return None
    source_ok = len(problems) == before
    tables = comp.options.get("tables", [])
    tables = [qualified(comp.factory, t, comp.options) for t in tables] if _strings(tables) else []
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
    for key in ("snapshot_chunk_size", "snapshot_parallelism"):  # checked for a type by the source's signature
        value = comp.options.get(key)
        if type(value) is int and value < 1:
            problems.append(ConfigProblem(f"{path}.{key}", f"must be at least 1 (got {value})"))
            source_ok = False
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
        spec = sources.get(source) if isinstance(source, str) else None
        if spec is not None and isinstance(tables, list):
            tables = [qualified(spec.factory, t, spec.options) for t in tables] if _strings(tables) else []
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
        spec.on_error = check_value(PIPELINE_ON_ERROR, raw["on_error"], f"{path}.on_error", problems)
    if "dead_letter" in raw:
        ctx = Context(directory, source=source or "", pipeline=name, name=f"{name}.dead_letter")
        spec.dead_letter, _ = _component("sinks", SINKS, raw["dead_letter"], f"{path}.dead_letter",
                                         ctx, problems)
    elif spec.on_error == "dead_letter":
        problems.append(ConfigProblem(f"{path}.dead_letter", "required when on_error is dead_letter"))
    return spec


def _sink(raw: Any, path: str, pipeline: str, source: str, index: int, directory: Path,
          problems: list[ConfigProblem]) -> list[SinkSpec]:
    raw_name = raw.get("name") if isinstance(raw, dict) else None
    type_name = raw.get("type") if isinstance(raw, dict) else None
    label = raw_name if isinstance(raw_name, str) else f"{pipeline}.sinks[{index}]:{type_name}"
    ctx = Context(directory, source=source, pipeline=pipeline, name=label)
    before = len(problems)
    comp, extra = _component("sinks", SINKS, raw, path, ctx, problems, SINK_KEYS)
    if comp is None:
        return []
    if len(problems) == before:
        _builds(comp, problems)
    spec = SinkSpec(comp.type, comp.factory, comp.options, path, ctx)
    for key in ("on_error", "retry", "batch_size", "max_batches_in_flight"):
        if key in extra:
            setattr(spec, key, extra[key])
    if "batch_size" not in extra:
        if isinstance(comp.factory, DefaultBatchSize):
            spec.batch_size = comp.factory.default_batch_size
    if "dead_letter" in raw:
        dl_ctx = dataclasses.replace(ctx, name=f"{ctx.name}.dead_letter")
        before = len(problems)
        spec.dead_letter, _ = _component("sinks", SINKS, raw["dead_letter"], f"{path}.dead_letter",
                                         dl_ctx, problems)
        if spec.dead_letter is not None and len(problems) == before:
            _builds(spec.dead_letter, problems)
    if spec.on_error == "dead_letter" and "dead_letter" not in raw:
        problems.append(ConfigProblem(f"{path}.dead_letter", "required when on_error is dead_letter"))
    _at_least(spec, ("batch_size", "max_batches_in_flight"), 1, path, problems)
    _at_least(spec.retry, ("max_attempts",), 0, f"{path}.retry", problems)
    _positive(spec.retry, ("initial_backoff", "max_backoff"), f"{path}.retry", problems)
    return [spec]


def _positive(spec: Any, keys: tuple[str, ...], path: str, problems: list[ConfigProblem]) -> None:
    for key in keys:
        value = getattr(spec, key)
        if isinstance(value, (int, float)) and not value > 0:
            problems.append(ConfigProblem(f"{path}.{key}", f"must be more than 0 (got {value})"))


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
