"""One PostgreSQL statement in flight on a psycopg connection, sent with libpq's
asynchronous calls: the caller builds the next batch while the server runs this one.

The statement runs in its own implicit transaction (one statement, sent outside
psycopg's transaction handling), so it is applied whole or not at all.  The
connection must be idle when it is sent, and nothing else may use it until
``done`` has returned True or raised."""

from __future__ import annotations

import select
from typing import Any

__all__ = ["Statement"]


class Statement:
    """A statement sent, not yet known to have ended.  ``done(timeout)``: True once it
    ended well, False while it runs; raises the driver's error when it failed.  ``value``:
    the first column of its first row, as text (None for none); ``about``: the caller's."""

    def __init__(self, conn: Any, sql: str, params: list[bytes | None], about: str = "") -> None:
        self._conn = conn
        self._pgconn = pgconn = conn.pgconn
        self._ended = False
        self._error: BaseException | None = None
        self.value: bytes | None = None
        self.about = about
        pgconn.send_query_params(sql.encode(conn.info.encoding), params)
        self._flushed = pgconn.flush() == 0

    def abandon(self) -> None:
        """The connection is being closed: unless it has ended, its outcome is unknown."""
        if not self._ended:
            self._ended = True
            self._error = ConnectionError("the connection was closed with the statement in flight")

    def done(self, timeout: float) -> bool:
        if self._ended:
            if self._error is not None:
                raise self._error
            return True
        pgconn = self._pgconn
        fd = pgconn.socket
        while not self._flushed:  # the rest of a large statement
            if not select.select([fd], [fd], [], timeout)[1]:
                return False
            self._flushed = pgconn.flush() == 0
        if pgconn.is_busy():
            if select.select([fd], [], [], timeout)[0]:
                pgconn.consume_input()
            if pgconn.is_busy():
                return False
        error = None
        while (result := pgconn.get_result()) is not None:
            if error is None and result.error_message:
                from psycopg import errors
                error = errors.error_from_result(result, encoding=self._conn.info.encoding)
            elif result.ntuples and self.value is None:
                self.value = result.get_value(0, 0)
        self._ended = True
        if error is not None:
            self._error = error
            raise error
        return True
