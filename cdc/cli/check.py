"""``cdc check CONFIG``: connect to every source and sink and report every problem at
once, each with its fix.  Errors block a run (exit 1); warnings do not."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import click

from ..abc import Checkable, Preflight, Timestamped, WritesTables
from ..checkpoints import build_store
from ..config import Config, SourceSpec
from ..config.targets import shared_target_tables
from ..observe.secrets import redact
from .common import CONFIG, NoAnswer, answer_within, command_timeout, load_or_exit

__all__ = ["Finding", "check_config", "check"]


@dataclass
class Finding:
    area: str      # e.g. "source shop (postgres)", "sink orders.sinks[0]:file"
    level: str     # "error" | "warning" | "ok"
    message: str

    def to_dict(self) -> dict:
        return {"area": self.area, "level": self.level, "message": self.message}


def check_config(cfg: Config) -> list[Finding]:
    out: list[Finding] = []
    for name, spec in cfg.sources.items():
        out.extend(_answered(f"source {name} ({spec.type})", _source, name, spec))
        for pipeline in cfg.pipelines_of(name):
            tables = pipeline.tables if pipeline.tables is not None else spec.tables
            for sink in pipeline.sinks:
                out.extend(_answered(f"sink {sink.context.name} ({sink.type})", _sink, sink.context.name, sink,
                                     tables))
                if sink.dead_letter is not None:
                    dead = sink.dead_letter
                    out.extend(_answered(f"sink {dead.context.name} ({dead.type})", _sink, dead.context.name, dead))
    out.extend(Finding(path, "warning", message) for path, message in shared_target_tables(cfg))
    return out


def _answered(area: str, check_one, *args) -> list[Finding]:
    """One part's findings, or an error when its server does not answer in time."""
    try:
        with answer_within():
            found = check_one(*args)
    except NoAnswer:
        return [Finding(area, "error", f"no answer within {command_timeout():.0f} s: the server accepts the "
                                       f"connection but does not answer (hung, overloaded, or not the server "
                                       f"expected at that address)")]
    return found if isinstance(found, list) else [found]


def _source(name: str, spec: SourceSpec) -> list[Finding]:
    area = f"source {name} ({spec.type})"
    position, age = None, None
    try:
        store = build_store(spec)
        try:
            position = store.load()
            saved_at = store.saved_at() if isinstance(store, Timestamped) else None
            age = time.time() - saved_at if saved_at else None
        finally:
            store.close()
    except Exception as exc:
        return [Finding(f"checkpoint {name}", "error", _text(exc))]
    try:
        source = spec.build()
        if not isinstance(source, Preflight):
            return [Finding(area, "ok", "no pre-flight checks for this source type")]
        problems = source.preflight(position, age)
    except Exception as exc:
        return [Finding(area, "error", _text(exc))]
    found = [Finding(area, level, redact(msg)) for level, msg in problems]
    return found or [Finding(area, "ok", "ready")]


def _sink(name: str, spec, tables: list[str] | None = None) -> list[Finding]:
    area = f"sink {name} ({spec.type})"
    try:
        sink = spec.build()
        if isinstance(sink, Checkable):
            sink.check()
        else:
            sink.open()
            sink.close()
    except Exception as exc:
        return [Finding(area, "error", f"unreachable: {_text(exc)}")]
    found = []
    if tables and isinstance(sink, WritesTables):
        try:
            found = [Finding(area, level, redact(message)) for level, message in sink.check_tables(tables)]
        except Exception as exc:
            found = [Finding(area, "error", f"cannot read its tables: {_text(exc)}")]
    return found or [Finding(area, "ok", "reachable")]


def _running(cfg: Config) -> dict[str, int | None]:
    """The sources whose ``cdc run`` holds their lock here, with its pid."""
    from ..observe.state import SourceLock
    locks = {name: SourceLock(cfg.state_dir, name) for name in cfg.sources}
    return {name: lock.holder() for name, lock in locks.items() if lock.held()}


def _text(exc: BaseException) -> str:
    return redact(f"{type(exc).__name__}: {exc}".strip() if not str(exc) else str(exc).strip())


@click.command()
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(config: str, as_json: bool) -> None:
    """Pre-flight: check every source's settings and every sink's reachability.

    Exits 1 if anything blocks a run (warnings do not)."""
    cfg = load_or_exit(config)
    findings = check_config(cfg)
    if as_json:
        click.echo(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        mark = {"ok": "ok   ", "warning": "WARN ", "error": "ERROR"}
        for f in findings:
            click.echo(f"{mark[f.level]} {f.area}: {f.message}")
    errors = sum(f.level == "error" for f in findings)
    if not as_json:
        warnings = sum(f.level == "warning" for f in findings)
        running = _running(cfg)
        for name, pid in running.items():
            click.echo(f"note  source {name} is running (pid {pid or '?'}): this checked it as it runs")
        ready = "" if errors or running else ": ready to run"
        click.echo(f"{errors} error(s), {warnings} warning(s){ready}")
    sys.exit(1 if errors else 0)
