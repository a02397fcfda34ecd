"""The optional heartbeat: ``pg_logical_emit_message`` on a connection of its own, so
that an idle slot's position moves on.  It runs on the reader's thread, so every call
is bounded: ``connect_timeout`` for the connection, and a deadline kept by the client
for the statement (a backend that stopped answering cannot enforce a server-side
``statement_timeout``; that one is set too, for a statement that waits on the server).
"""

from __future__ import annotations

import logging
import select
import time
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["Heartbeat"]

log = logging.getLogger("cdc.source.postgres")
TIMEOUT = 5.0  # seconds for a connection or a heartbeat statement


class Heartbeat:
    def __init__(self, dsn: str, source: str, prefix: str, timeout: float = TIMEOUT) -> None:
        params: dict[str, Any] = conninfo_to_dict(dsn)
        params.setdefault("connect_timeout", str(max(int(timeout), 2)))
        options = f"-c statement_timeout={int(timeout * 1000)}"
        params["options"] = " ".join(filter(None, [params.get("options", ""), options]))
        params.setdefault("application_name", "cdc heartbeat")
        self.conninfo = make_conninfo(**params).encode()
        self.source = source
        self.prefix = prefix.encode()
        self.timeout = timeout
        self._conn: pq.abc.PGconn | None = None

    def beat(self) -> None:
        """Emit one heartbeat message; on any failure, log it and drop the connection
        (the next beat opens a new one)."""
        try:
            self._emit()
        except (psycopg.Error, OSError, RuntimeError) as exc:
            log.warning("source %s: heartbeat failed: %s", self.source, str(exc).strip())
            self.close()

    def _emit(self) -> None:
        conn = self._conn
        if conn is None:
            conn = pq.PGconn.connect(self.conninfo)  # bounded by connect_timeout
            if conn.status != pq.ConnStatus.OK:
                message = conn.get_error_message()
                conn.finish()
                raise RuntimeError(message or "cannot connect")
            self._conn = conn
        deadline = time.monotonic() + self.timeout
        conn.send_query_params(b"SELECT pg_logical_emit_message(false, $1, '')", [self.prefix])
        while True:
            conn.consume_input()
            if not conn.is_busy():
                break
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([conn.socket], [], [], left)[0]:
                raise TimeoutError(f"no answer within {self.timeout:g}s")
        while (result := conn.get_result()) is not None:
            if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
                raise RuntimeError((result.error_message or b"").decode(errors="replace"))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.finish()
            self._conn = None
