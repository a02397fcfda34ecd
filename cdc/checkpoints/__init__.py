"""Checkpoint stores keep a source's last fully acknowledged position."""

from __future__ import annotations

from typing import Any

from ..abc import RecordsDatabase
from ..errors import CheckpointError

__all__ = ["CHECKPOINTS", "build_store", "database_of", "UnreadableCheckpoint", "ForeignCheckpoint"]

CHECKPOINTS = {
    "file": "cdc.checkpoints.file:FileCheckpointStore",
    "postgres": "cdc.checkpoints.postgres:PostgresCheckpointStore",
    "memory": "cdc.checkpoints.memory:MemoryCheckpointStore",
}


def database_of(source_spec: Any) -> str | None:
    """The database a source's positions belong to: a PostgreSQL LSN is read through a slot of
    one database.  (A MySQL binlog position belongs to the server, not to a database: None.)"""
    if source_spec.type != "postgres":
        return None
    from psycopg.conninfo import conninfo_to_dict
    try:
        database = conninfo_to_dict(str(source_spec.options.get("dsn", ""))).get("dbname")
    except Exception:  # the source's own connection reports a bad DSN
        return None
    return str(database) if database else None


def build_store(source_spec: Any) -> Any:
    """The source's checkpoint store, told which database the source reads."""
    store = source_spec.checkpoint.build()
    database = database_of(source_spec)
    if database and isinstance(store, RecordsDatabase):
        store.bind_database(database)
    return store


class UnreadableCheckpoint(CheckpointError):
    """The checkpoint (a file, a row) exists but holds no usable position (empty, garbage, no ``position``).
    ``content`` is what it holds, for ``cdc checkpoint reset`` to show what it forgets."""

    def __init__(self, where: object, source: str, content: str, why: str) -> None:
        self.content = content
        name = source or "NAME"
        super().__init__(
            f"cannot read checkpoint {where}: {why}. Where source {name} stopped is unknown, so it does not "
            f"start (starting from the current position would skip every change since). Restore it "
            f"from a backup, or give the position with `cdc checkpoint set CONFIG --source {name} --position "
            f"JSON`, or forget it with `cdc checkpoint reset CONFIG --source {name}` (the next run starts "
            f"as a first run: a snapshot copies the tables again, or with snapshot: never the changes "
            f"since the lost position are not delivered)")


class ForeignCheckpoint(CheckpointError):
    """The checkpoint holds a position saved reading another database: refused.  ``content``
    is the position, for ``cdc checkpoint reset`` to show what it forgets."""

    def __init__(self, message: str, content: str, saved_in: str) -> None:
        self.content, self.saved_in = content, saved_in
        super().__init__(message)
