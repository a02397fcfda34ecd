"""``table``: events appended as JSON rows to a table in PostgreSQL or MySQL/MariaDB.

Made for dead-letter queues (``dead_letter: {type: table, dsn: ..., table: cdc_dead_letters}``)
but usable for any event log.  The table is created when missing::

    seq bigint auto-increment primary key, entry_id, event_id, sink, recorded_at, body (JSON)

``entry_id`` is the dead letter's id (``message.dead_letter.id``), else the event id.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..event import ChangeEvent
from ._db import Target, connect, sink_error

__all__ = ["TableSink"]

_DDL = {
    "postgres": "CREATE TABLE IF NOT EXISTS {t} (seq bigserial PRIMARY KEY, entry_id text NOT NULL,"
                " event_id text NOT NULL, sink text, recorded_at timestamptz NOT NULL DEFAULT now(),"
                " body jsonb NOT NULL)",
    "mysql": "CREATE TABLE IF NOT EXISTS {t} (seq bigint AUTO_INCREMENT PRIMARY KEY,"
             " entry_id varchar(255) NOT NULL, event_id varchar(255) NOT NULL, sink varchar(255),"
             " recorded_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), body longtext NOT NULL,"
             " KEY (entry_id)) DEFAULT CHARSET=utf8mb4",
}


class TableSink:
    """Options: ``dsn`` (``postgresql://...`` or ``mysql://...``) and ``table``."""

    default_batch_size = 500

    def __init__(self, dsn: str, table: str = "cdc_dead_letters") -> None:
        self.dsn = dsn
        self.table = table
        self.target: Target | None = None

    def open(self) -> None:
        self.target = connect(self.dsn)
        try:
            with self.target.conn.cursor() as cur:
                cur.execute(_DDL[self.target.dialect].format(t=self.target.quote(self.table)))
            self.target.conn.commit()
        except Exception as exc:
            raise sink_error(exc, f"cannot create table {self.table}") from exc

    def write(self, events: Sequence[ChangeEvent]) -> None:
        if self.target is None:
            self.open()
        t = self.target
        rows = []
        for e in events:
            entry = ((e.message or {}).get("dead_letter") or {}).get("id") or e.id
            sink = ((e.message or {}).get("dead_letter") or {}).get("sink")
            rows.append((entry, e.id, sink, e.to_json().decode()))
        table = t.quote(self.table).replace("%", "%%")  # both drivers read '%' as a placeholder here
        sql = f"INSERT INTO {table} (entry_id, event_id, sink, body) VALUES (%s, %s, %s, %s)"
        try:
            with t.conn.cursor() as cur:
                cur.executemany(sql, rows)
            t.conn.commit()
        except Exception as exc:
            self._reset()
            raise sink_error(exc, f"cannot insert into {self.table}") from exc

    def _reset(self) -> None:
        if self.target is not None:
            try:
                self.target.conn.rollback()
            except Exception:
                self.target.close()
                self.target = None

    def close(self) -> None:
        if self.target is not None:
            self.target.close()
            self.target = None
