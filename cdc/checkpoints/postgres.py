"""``postgres``: positions in a table, one row per source, upserted in one statement."""

from __future__ import annotations

import json

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..config.model import Context
from ..errors import CheckpointError
from ..faults import crash_point
from . import UnreadableCheckpoint

__all__ = ["PostgresCheckpointStore"]


class PostgresCheckpointStore:
    """``table`` may be schema-qualified; it is created when missing.  ``timeout``
    (seconds) bounds the connection and every statement (``statement_timeout``,
    ``lock_timeout``), so that a locked table or a stuck server never blocks the reader;
    TCP keepalives and ``tcp_user_timeout`` find a connection whose peer is gone."""

    def __init__(self, dsn: str, table: str = "cdc_checkpoints", timeout: float = 10.0,
                 context: Context | None = None) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.table = sql.Identifier(*table.split(".", 1))
        self.source = context.source if context else "default"
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True, **self._settings())
                self._conn.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (source text PRIMARY KEY, position jsonb NOT NULL,"
                    " saved_at timestamptz NOT NULL DEFAULT now())").format(self.table))
            except psycopg.Error as exc:
                self._conn = None
                raise CheckpointError(f"checkpoint database: {exc}".strip()) from exc
        return self._conn

    def _settings(self) -> dict:
        ms = max(int(self.timeout * 1000), 1)
        options = " ".join(filter(None, [str(conninfo_to_dict(self.dsn).get("options", "")),
                                         f"-c statement_timeout={ms} -c lock_timeout={ms}"]))
        return {"connect_timeout": max(int(self.timeout), 2), "options": options,
                "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                "tcp_user_timeout": max(ms, 10_000)}

    def _run(self, query: sql.Composed, params: tuple) -> list:
        try:
            cur = self._connection().execute(query, params)
            return cur.fetchall() if cur.description else []
        except psycopg.OperationalError as exc:  # statement_timeout and lock_timeout included
            self.close()  # reconnect next time
            raise CheckpointError(f"checkpoint database: {exc}".strip()) from exc

    def load(self) -> dict | None:
        rows = self._run(sql.SQL("SELECT position FROM {} WHERE source = %s").format(self.table),
                         (self.source,))
        if rows and not isinstance(rows[0][0], dict):  # e.g. 'null'::jsonb: never a first run
            raise UnreadableCheckpoint(f"row {self.source} of table {self.table.as_string(None)}", self.source,
                                       json.dumps(rows[0][0]), f"it holds {json.dumps(rows[0][0])}, not a position")
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
