"""``postgres``: positions in a table, one row per source, upserted in one statement.

Each row records the database its position was read from (``database``; NULL in rows saved
before it was recorded, which are accepted): a position saved reading another database is
refused, on load and on save."""

from __future__ import annotations

import json

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ..config.model import Context
from ..errors import CheckpointError
from ..faults import crash_point
from . import ForeignCheckpoint, UnreadableCheckpoint

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
        self.database: str | None = None
        self._conn: psycopg.Connection | None = None

    def bind_database(self, database: str) -> None:
        self.database = database

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.dsn, autocommit=True, **self._settings())
                self._conn.execute(sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (source text PRIMARY KEY, position jsonb NOT NULL,"
                    " saved_at timestamptz NOT NULL DEFAULT now(), database text)").format(self.table))
                self._add_database_column(self._conn)
            except psycopg.Error as exc:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                raise CheckpointError(f"checkpoint database: {exc}".strip()) from exc
        return self._conn

    def _add_database_column(self, conn: psycopg.Connection) -> None:
        """A table made by an older version has no ``database`` column: add it."""
        try:
            conn.execute(sql.SQL("SELECT database FROM {} LIMIT 0").format(self.table))
            return
        except psycopg.errors.UndefinedColumn:
            pass
        try:
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS database text").format(self.table))
        except psycopg.errors.InsufficientPrivilege as exc:
            table = self.table.as_string(None)
            raise CheckpointError(
                f"checkpoint table {table} has no database column (made by an older cdc), and this user "
                f"cannot add it: {str(exc).strip()}. As the table's owner, run: ALTER TABLE {table} "
                f"ADD COLUMN database text") from None

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
        except psycopg.Error as exc:  # timeouts, a lost connection, rights revoked, the table dropped
            self.close()  # reconnect (and create the table if it is gone) next time
            raise CheckpointError(f"checkpoint database: {exc}".strip()) from exc

    def load(self) -> dict | None:
        rows = self._run(sql.SQL("SELECT position, database FROM {} WHERE source = %s").format(self.table),
                         (self.source,))
        if not rows:
            return None
        position, saved_in = rows[0]
        if not isinstance(position, dict):  # e.g. 'null'::jsonb: never a first run
            raise UnreadableCheckpoint(f"row {self.source} of table {self.table.as_string(None)}", self.source,
                                       json.dumps(position), f"it holds {json.dumps(position)}, not a position")
        self._check_database(saved_in, position)
        return position

    def _check_database(self, saved_in: str | None, position: object) -> None:
        if not (saved_in and self.database and saved_in != self.database):
            return
        name, table = self.source, self.table.as_string(None)
        raise ForeignCheckpoint(
            f"checkpoint row {name} of table {table} was saved reading database {saved_in}, but source {name} "
            f"now reads database {self.database}: resuming there from that position would skip the changes of "
            f"{self.database} up to it. Give source {name} its own checkpoint table (or restore its own row); "
            f"if {saved_in} was renamed to {self.database}, run UPDATE {table} SET database = "
            f"'{self.database}' WHERE source = '{name}'; to start over, `cdc checkpoint reset CONFIG --source "
            f"{name}` (only when no source of another deployment saves its position in that row: it would "
            f"lose it)", json.dumps(position), saved_in)

    def saved_at(self) -> float | None:
        rows = self._run(sql.SQL("SELECT extract(epoch FROM saved_at) FROM {} WHERE source = %s")
                         .format(self.table), (self.source,))
        return float(rows[0][0]) if rows else None

    def save(self, position: dict) -> None:
        if crash_point is not None: crash_point("checkpoint_write")  # noqa: E701 - crash point (cdc/faults.py)
        saved = self._run(sql.SQL(
            "INSERT INTO {} AS saved (source, position, database, saved_at) VALUES (%s, %s, %s, now())"
            " ON CONFLICT (source) DO UPDATE SET position = EXCLUDED.position, saved_at = now(),"
            " database = coalesce(EXCLUDED.database, saved.database)"
            " WHERE saved.database IS NULL OR EXCLUDED.database IS NULL OR saved.database = EXCLUDED.database"
            " RETURNING true"
        ).format(self.table), (self.source, json.dumps(position), self.database))
        if not saved:  # the row belongs to another database: never overwrite it
            rows = self._run(sql.SQL("SELECT position, database FROM {} WHERE source = %s").format(self.table),
                             (self.source,))
            if rows:
                self._check_database(rows[0][1], rows[0][0])
            raise CheckpointError(f"checkpoint row {self.source} of table {self.table.as_string(None)} "
                                  f"was not saved (it changed meanwhile); it is saved again at the next checkpoint")

    def reset(self) -> None:
        self._run(sql.SQL("DELETE FROM {} WHERE source = %s").format(self.table), (self.source,))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
