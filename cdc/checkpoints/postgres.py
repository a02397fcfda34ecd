"""``postgres``: positions in a table, one row per source, upserted in one statement."""

from __future__ import annotations

import json

import psycopg
from psycopg import sql

from ..config.model import Context
from ..errors import CheckpointError
from ..faults import crash_point

__all__ = ["PostgresCheckpointStore"]


class PostgresCheckpointStore:
    """``table`` may be schema-qualified; it is created when missing."""

    def __init__(self, dsn: str, table: str = "cdc_checkpoints", context: Context | None = None) -> None:
        self.dsn = dsn
        self.table = sql.Identifier(*table.split(".", 1))
        self.source = context.source if context else "default"
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
                self._conn.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (source text PRIMARY KEY, position jsonb NOT NULL,"
                    " saved_at timestamptz NOT NULL DEFAULT now())").format(self.table))
            except psycopg.Error as exc:
                self._conn = None
                raise CheckpointError(f"checkpoint database: {exc}".strip()) from exc
        return self._conn

    def _run(self, query: sql.Composed, params: tuple) -> list:
        try:
            cur = self._connection().execute(query, params)
            return cur.fetchall() if cur.description else []
        except psycopg.OperationalError as exc:
            self._conn = None  # reconnect next time
            raise CheckpointError(f"checkpoint database: {exc}".strip()) from exc

    def load(self) -> dict | None:
        rows = self._run(sql.SQL("SELECT position FROM {} WHERE source = %s").format(self.table),
                         (self.source,))
        return rows[0][0] if rows else None

    def saved_at(self) -> float | None:
        rows = self._run(sql.SQL("SELECT extract(epoch FROM saved_at) FROM {} WHERE source = %s")
                         .format(self.table), (self.source,))
        return float(rows[0][0]) if rows else None

    def save(self, position: dict) -> None:
        if crash_point is not None: crash_point("checkpoint_write")  # noqa: E701 - crash point (cdc/faults.py)
        self._run(sql.SQL(
            "INSERT INTO {} (source, position, saved_at) VALUES (%s, %s, now())"
            " ON CONFLICT (source) DO UPDATE SET position = EXCLUDED.position, saved_at = now()"
        ).format(self.table), (self.source, json.dumps(position)))

    def reset(self) -> None:
        self._run(sql.SQL("DELETE FROM {} WHERE source = %s").format(self.table), (self.source,))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
