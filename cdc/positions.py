"""``cdc checkpoint show|set|reset CONFIG --source NAME``: an operator moves a position.

Refused while the source's ``cdc run`` process holds its lock (``state_dir``), so a
running pipeline never has its checkpoint changed under it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .config import Config
from .observe.state import LockHeld, SourceLock

__all__ = ["show", "set_position", "reset", "drop_slot", "PositionError"]


class PositionError(Exception):
    """The command cannot be carried out; the message says why."""


def _store(cfg: Config, source: str):
    if source not in cfg.sources:
        raise PositionError(f"no source named {source!r} (sources: {', '.join(cfg.sources)})")
    return cfg.sources[source].checkpoint.build()


@contextmanager
def _locked(cfg: Config, source: str) -> Iterator[None]:
    """Hold the source's lock: refused while its ``cdc run`` holds it."""
    try:
        lock = SourceLock(cfg.state_dir, source).acquire()
    except LockHeld as exc:
        raise PositionError(str(exc)) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _locked_store(cfg: Config, source: str) -> Iterator[Any]:
    """The source's checkpoint store, with the source's lock held."""
    with _locked(cfg, source):
        store = _store(cfg, source)
        try:
            yield store
        finally:
            store.close()


def show(cfg: Config, source: str) -> dict[str, Any]:
    store = _store(cfg, source)
    try:
        saved_at = store.saved_at() if hasattr(store, "saved_at") else None
        return {"source": source, "position": store.load(), "saved_at": saved_at,
                "age_s": round(time.time() - saved_at, 1) if saved_at else None,
                "running": SourceLock(cfg.state_dir, source).held()}
    finally:
        store.close()


def set_position(cfg: Config, source: str, position: str) -> dict:
    """``position`` is the JSON of a position, e.g. ``{"lsn": "0/1A2B3C8"}``."""
    try:
        value = json.loads(position)
    except ValueError as exc:
        raise PositionError(f"--position is not JSON: {exc}") from None
    if not isinstance(value, dict) or not value:
        raise PositionError('--position must be a JSON object such as \'{"lsn": "0/1A2B3C8"}\'')
    with _locked_store(cfg, source) as store:
        old = store.load()
        if old is not None and "snapshot" in old and "snapshot" not in value:
            value = {**value, "snapshot": old["snapshot"]}  # a copy's progress stays (docs/snapshots.md)
        if old is not None and set(old) != set(value):
            raise PositionError(f"the saved position has keys {sorted(old)}; "
                                f"--position has {sorted(value)}")
        store.save(value)
        return value


def reset(cfg: Config, source: str) -> dict | None:
    """Forget the position; returns what it was."""
    with _locked_store(cfg, source) as store:
        old = store.load()
        store.reset()
        return old


def slot_of(cfg: Config, source: str) -> str | None:
    """The replication slot of a PostgreSQL source, else None."""
    spec = cfg.sources[source]
    if spec.type != "postgres":
        return None
    return spec.build().slot


def drop_slot(cfg: Config, source: str) -> bool:
    """Drop a PostgreSQL source's slot; False when there was none."""
    from .sources.postgres import setup
    src = cfg.sources[source].build()
    with _locked(cfg, source), setup.connect(src.dsn, source) as conn:
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                           (src.slot,)).fetchone()
        if row is None:
            return False
        if row[0] is not None:
            raise PositionError(f"slot {src.slot} is in use by pid {row[0]} on the server")
        conn.execute("SELECT pg_drop_replication_slot(%s)", (src.slot,))
        return True
