"""``cdc checkpoint show|set|reset CONFIG --source NAME``: an operator moves a position.

Refused while the source's ``cdc run`` process holds its lock (``state_dir``), or while the
server shows it read elsewhere (a ``cdc run`` on another machine sharing the checkpoint
store): for PostgreSQL its slot in use, for MySQL/MariaDB a binlog dump opened by its user
(or a replica registered with its server_id), so a running pipeline never has its checkpoint
changed under it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..abc import PositionCheck, ReadersSeen, SlotOwner, Timestamped
from ..config.model import Config
from ..errors import CheckpointError
from ..observe.state import LockHeld, SourceLock
from ..snapshot.controller import POSITION_KEY
from . import ForeignCheckpoint, UnreadableCheckpoint, build_store
from .file import FileCheckpointStore

__all__ = ["show", "set_position", "reset", "drop_slot", "PositionError"]


class PositionError(Exception):
    """The command cannot be carried out; the message says why."""


def _store(cfg: Config, source: str):
    if source not in cfg.sources:
        raise PositionError(f"no source named {source!r} (sources: {', '.join(cfg.sources)})")
    return build_store(cfg.sources[source])


@contextmanager
def _locked(cfg: Config, source: str) -> Iterator[None]:
    """Hold the source's lock: refused while its ``cdc run`` holds it."""
    try:
        lock = SourceLock(cfg.state_dir, source).acquire()
    except LockHeld as exc:
        raise PositionError(str(exc)) from None
    except OSError as exc:
        raise PositionError(f"cannot take the lock of source {source} in {cfg.state_dir} (state_dir): "
                            f"{exc.strerror}; it keeps a running cdc from having its checkpoint changed "
                            f"under it: make {cfg.state_dir} writable") from None
    try:
        yield
    finally:
        lock.release()


def _refuse_if_reading(cfg: Config, source: str) -> None:
    """The lock only sees a ``cdc run`` of this machine (its ``state_dir``): a reader the
    server shows (``ReadersSeen``: a PostgreSQL slot in use, a MySQL/MariaDB binlog dump of
    the source's user or server_id) is a ``cdc run`` of this source elsewhere (a shared
    checkpoint store), which would overwrite a changed position at its next checkpoint.  An
    unreachable server says nothing: the lock decides alone."""
    src = cfg.sources[source].build()
    if not isinstance(src, ReadersSeen):
        return
    reader = src.reader_elsewhere(lambda text: print(f"source {source}: {text}", file=sys.stderr, flush=True))
    if reader:
        raise PositionError(f"source {source} is running, perhaps on another machine: stop it first (a position "
                            f"changed now would be overwritten at its next checkpoint). What shows it: {reader}")


@contextmanager
def _locked_store(cfg: Config, source: str) -> Iterator[Any]:
    """The source's checkpoint store, with the source's lock held, and refused while the
    source is read elsewhere."""
    with _locked(cfg, source):
        _refuse_if_reading(cfg, source)
        store = _store(cfg, source)
        try:
            yield store
        finally:
            store.close()


def show(cfg: Config, source: str) -> dict[str, Any]:
    store = _store(cfg, source)
    try:
        saved_at = store.saved_at() if isinstance(store, Timestamped) else None
        return {"source": source, "position": store.load(), "saved_at": saved_at,
                "age_s": round(time.time() - saved_at, 1) if saved_at else None,
                "running": SourceLock(cfg.state_dir, source).held()}
    finally:
        store.close()


# Kept by a source beside its log position, not part of it (MySQL: the server it was read from);
# a position typed without them is checked by the source as it is.
RECORDED = frozenset({"server"})


def set_position(cfg: Config, source: str, position: str) -> dict:
    """``position`` is the JSON of a log position, e.g. ``{"lsn": "0/1A2B3C8"}``.  The saved
    snapshot progress (``snapshot``: the tables copied, the copy in progress) is kept unless
    ``position`` gives one: moving the log position does not make a source copy its tables again."""
    try:
        value = json.loads(position)
    except ValueError as exc:
        raise PositionError(f"--position is not JSON: {exc}") from None
    if not isinstance(value, dict) or not value:
        raise PositionError('--position must be a JSON object such as \'{"lsn": "0/1A2B3C8"}\'')
    log_position = {k: v for k, v in value.items() if k != POSITION_KEY}
    if POSITION_KEY in value:
        problem = _progress_problem(value[POSITION_KEY])
        if problem:
            raise PositionError(f"--position's {POSITION_KEY!r} is not a snapshot progress ({problem}): give it "
                                f"as `cdc checkpoint show` prints it, or leave it out to keep the saved one")
    with _locked_store(cfg, source) as store:
        old = store.load()
        old_log = {k for k in old if k != POSITION_KEY and k not in RECORDED} if old is not None else None
        if old_log is not None and old_log != set(log_position) - RECORDED:
            raise PositionError(f"the saved position has keys {sorted(old_log)}; --position has "
                                f"{sorted(log_position)}: give the same keys (`cdc checkpoint show` prints them)")
        src = cfg.sources[source].build()
        if isinstance(src, PositionCheck):
            try:
                src.check_position(log_position)
            except ValueError as exc:
                raise PositionError(f"--position refused: {exc}") from None
            except Exception as exc:  # the server is down, the database gone: a driver's error
                raise PositionError(f"--position cannot be checked against source {source}'s server: "
                                    f"{type(exc).__name__}: {str(exc).strip()}; nothing was changed") from None
        progress = value.get(POSITION_KEY, (old or {}).get(POSITION_KEY))
        new = {**log_position, POSITION_KEY: progress} if progress is not None else log_position
        store.save(new)
        return new


class Refused(str):
    """What a checkpoint that ``load`` refuses holds, as it was, and ``why`` it was refused."""

    why: str


def _refused(content: str, why: str) -> Refused:
    text = Refused(content)
    text.why = why
    return text


def _another_database(store: Any) -> Refused | None:
    """A file checkpoint of this source saved reading another database: its text, else None.
    (A file saved by another source is not this source's to forget.)"""
    if not isinstance(store, FileCheckpointStore) or not store.database:
        return None
    try:
        text = store.path.read_text()
        data = json.loads(text)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("source") not in (None, "", store.source):
        return None
    saved_in = data.get("database")
    if not saved_in or saved_in == store.database:
        return None
    return _refused(text, f"saved reading database {saved_in}")


def _progress_problem(progress: object) -> str | None:
    """What makes ``progress`` unusable as the saved snapshot progress, else None."""
    if not isinstance(progress, dict):
        return "not an object"
    tables, queue, skipped = progress.get("tables", []), progress.get("queue", []), progress.get("skipped", {})
    if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
        return '"tables" is not a list of table names'
    if not isinstance(skipped, dict) or not all(isinstance(v, str) for v in skipped.values()):
        return '"skipped" is not an object of table names and reasons'
    if not isinstance(queue, list):
        return '"queue" is not a list'
    for entry in queue:
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), str) and isinstance(entry.get("table"), str)
                and isinstance(entry.get("after"), (list, type(None))) and isinstance(entry.get("rows"), int)
                and isinstance(entry.get("where"), (str, type(None)))):
            return f'"queue" holds {json.dumps(entry)}, not a copy with "id", "table", "after" and "rows"'
    return None


def reset(cfg: Config, source: str) -> dict | Refused | None:
    """Forget the position; returns what it was (a refused checkpoint's content, as it was:
    unreadable, or saved reading another database)."""
    with _locked_store(cfg, source) as store:
        try:
            old: dict | Refused | None = store.load()
        except UnreadableCheckpoint as exc:  # forgetting it is the way out
            old = _refused(exc.content, "unreadable")
        except ForeignCheckpoint as exc:
            old = _refused(exc.content, f"saved reading database {exc.saved_in}")
        except CheckpointError:
            old = _another_database(store)
            if old is None:
                raise
        store.reset()
        return old


def slot_of(cfg: Config, source: str) -> str | None:
    """The replication slot a source holds on its server, else None."""
    src = cfg.sources[source].build()
    return src.slot if isinstance(src, SlotOwner) else None


def drop_slot(cfg: Config, source: str) -> bool:
    """Drop a source's replication slot; False when there was none (or it holds none)."""
    src = cfg.sources[source].build()
    if not isinstance(src, SlotOwner):
        return False
    with _locked(cfg, source):
        return src.drop_slot()
