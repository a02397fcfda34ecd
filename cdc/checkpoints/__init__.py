"""Checkpoint stores keep a source's last fully acknowledged position."""

from __future__ import annotations

from typing import Any

from ..abc import RecordsDatabase

__all__ = ["CHECKPOINTS", "build_store", "database_of"]

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
