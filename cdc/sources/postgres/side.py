"""The source's one ordinary connection beside the replication stream, for the optional
heartbeat (``pg_logical_emit_message``, so that an idle slot's position moves on) and the
check that the captured tables still exist.  It is opened when first needed and kept.

It is used on the reader's thread, so every call is bounded: ``connect_timeout`` for the
connection, and a deadline kept by the client for the statement (a backend that stopped
answering cannot enforce a server-side ``statement_timeout``; that one is set too, for a
statement that waits on the server).  A call that fails drops the connection; the next
one opens a new one.
"""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["SideConnection", "SideError"]

TIMEOUT = 5.0  # seconds for a connection or a statement


class SideError(Exception):
    """A side statement failed: no connection, no answer in time, or an error from the server."""


class SideConnection:
    def __init__(self, dsn: str, timeout: float = TIMEOUT) -> None:
        params: dict[str, Any] = conninfo_to_dict(dsn)
        params.setdefault("connect_timeout", str(max(int(timeout), 2)))
        options = f"-c statement_timeout={int(timeout * 1000)}"
        params["options"] = " ".join(filter(None, [params.get("options", ""), options]))
        params["application_name"] = params.get("application_name", "cdc") + "_checks"
        self.conninfo = make_conninfo(**params).encode()
        self.timeout = timeout
        self._conn: pq.abc.PGconn | None = None

    def query(self, query: bytes, params: list[bytes | None]) -> list[tuple[bytes | None, ...]]:
        """The rows of ``query`` (parameters and values as text); ``SideError`` on any failure."""
        try:
            return self._query(query, params)
        except SideError:
            self.close()
            raise
        except (psycopg.Error, OSError) as exc:
            self.close()
            raise SideError(str(exc).strip()) from exc

    def _query(self, query: bytes, params: list[bytes | None]) -> list[tuple[bytes | None, ...]]:
        conn = self._conn
        if conn is None:
            conn = pq.PGconn.connect(self.conninfo)  # bounded by connect_timeout
            if conn.status != pq.ConnStatus.OK:
                message = conn.get_error_message()
                conn.finish()
                raise SideError((message or b"cannot connect").decode(errors="replace").strip())
            self._conn = conn
        deadline = time.monotonic() + self.timeout
        conn.send_query_params(query, params)
        while True:
            conn.consume_input()
            if not conn.is_busy():
                break
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([conn.socket], [], [], left)[0]:
                raise SideError(f"no answer within {self.timeout:g}s")
        rows: list[tuple[bytes | None, ...]] = []
        while (result := conn.get_result()) is not None:
            if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
                raise SideError((result.error_message or b"").decode(errors="replace").strip())
            rows += [tuple(result.get_value(r, c) for c in range(result.nfields)) for r in range(result.ntuples)]
        if conn.status != pq.ConnStatus.OK:
            raise SideError("the connection was lost")
        return rows

    def close(self) -> None:
        if self._conn is not None:
            self._conn.finish()
            self._conn = None
