"""A logical replication stream over psycopg 3's libpq-level copy-both calls.

Why not psycopg2's ``LogicalReplicationConnection``: on the 400k bench workload
both read pgoutput at the walsender's pace (psycopg2 0.96x, psycopg 3 0.92x of
pg_recvlogical without decoding; 1.23x and 1.10x with a pure-Python decoder, the
walsender being the limit on two cores).  psycopg 3 costs ~30% more client CPU per
message but is already our dependency, so we keep one PostgreSQL driver.
"""

from __future__ import annotations

import os
import re
import select
import struct
import threading
import time
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ...errors import SourceConnectionError, SourceError
from ...lsn import format_lsn

__all__ = ["ReplicationStream", "SESSION_OPTIONS", "encrypted", "parse_duration"]

PG_EPOCH_US = 946_684_800_000_000
SESSION_OPTIONS = "-c DateStyle=ISO -c IntervalStyle=iso_8601 -c TimeZone=UTC -c extra_float_digits=3"
_status = struct.Struct(">cQQQqB").pack
_frame_len = struct.Struct(">i").unpack_from
_frame_head = struct.Struct(">i").pack
CONNECT_TIMEOUT = "10"     # seconds, unless the DSN says otherwise: a dead host must not block for ever
STATUS_INTERVAL = 10.0     # seconds between standby status updates at most
DEAD_AFTER = 120.0         # seconds of silence (no data, no keepalive) that mean a lost connection,
                           # when the server's wal_sender_timeout is 0 (off)
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``SHOW wal_sender_timeout`` (``60s``, ``500ms``, ``1min``, ``0``) in seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * _UNITS.get(m.group(2) or "ms", 1e-3)


def encrypted(pgconn: pq.abc.PGconn) -> bool:
    """Does libpq encrypt this connection (TLS, or GSSAPI encryption)?  Then the socket
    carries ciphertext and only libpq may read it.  GSSAPI: libpq >= 16 reports it
    (``PQconnectionUsedGSSAPI`` is true whenever GSS encryption is on); with an older
    libpq, a connection that did not disable it is taken as encrypted."""
    if pgconn.ssl_in_use:
        return True
    try:
        return bool(pgconn.used_gssapi)
    except psycopg.NotSupportedError:
        mode = next((o.val for o in pgconn.info if o.keyword == b"gssencmode"), None)
        return mode != b"disable"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ReplicationStream:
    """``START_REPLICATION`` on a walsender connection; ``receive()`` returns raw
    protocol frames; ``send_status(flush_lsn)`` confirms a position."""

    def __init__(self, dsn: str) -> None:
        params: dict[str, Any] = conninfo_to_dict(dsn)  # values parsed from a DSN string are strings
        options = " ".join(filter(None, [params.pop("options", ""), SESSION_OPTIONS]))
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        self.conninfo = make_conninfo(**params, replication="database", options=options,
                                      application_name=params.get("application_name", "cdc"))
        self.pgconn: pq.abc.PGconn | None = None
        self.received_lsn = 0
        self._tail = b""       # the last buffer read, processed up to _tail_pos (kept, not copied)
        self._tail_pos = 0
        self._raw = False
        self._fd = -1
        self._out = b""
        # The main thread reads; the engine's guard thread may send status updates while
        # the main thread is busy elsewhere: libpq's connection is used by one at a time.
        self._lock = threading.Lock()
        self.wal_sender_timeout = 0.0   # the server's, in seconds (0: off)
        self.status_interval = STATUS_INTERVAL
        self.dead_after = DEAD_AFTER
        self.last_data = time.monotonic()  # when bytes last came from the server
        self.last_status = 0.0
        self.lost: str | None = None       # set by the watchdog

    def start(self, slot: str, start_lsn: int, options: dict[str, str]) -> None:
        pgconn = pq.PGconn.connect(self.conninfo.encode())
        if pgconn.status != pq.ConnStatus.OK:
            message = pgconn.get_error_message()
            pgconn.finish()
            raise SourceConnectionError(message.strip() or "cannot connect")
        self._timeouts(pgconn)
        opts = ", ".join(f"{quote_ident(k)} {quote_literal(v)}" for k, v in options.items())
        command = f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {format_lsn(start_lsn)} ({opts})"
        raw = not encrypted(pgconn)
        if raw:
            # libpq must read nothing past the CopyBothResponse: the walsender streams right
            # after it, and bytes libpq took (a message's first part, say) would be missing
            # from the socket reads that follow
            tail = self._start_raw(pgconn, command.encode())
        else:
            result = pgconn.exec_(command.encode())
            if result.status != pq.ExecStatus.COPY_BOTH:
                message = (result.error_message or pgconn.get_error_message()).decode(errors="replace").strip()
                sqlstate = (result.error_field(pq.DiagnosticField.SQLSTATE) or b"").decode() or None
                pgconn.finish()
                raise self._start_failed(message, sqlstate)
        self.pgconn = pgconn
        self._fd = pgconn.socket
        self._raw = raw
        self.last_data = time.monotonic()
        self._tail = tail if raw else self._read_libpq(0, wait=False)  # what libpq already read
        self._tail_pos = 0

    @staticmethod
    def _start_failed(message: str, sqlstate: str | None) -> SourceError:
        # Worth retrying: 55006, the slot is still held by the walsender of a connection
        # that just broke (it goes away shortly); class 57, the server or an operator ended
        # the connection (57P01: pg_terminate_backend, a shutdown, 57P03: starting up);
        # class 08, the connection itself.
        retry = sqlstate is None or sqlstate == "55006" or sqlstate[:2] in ("57", "08")
        error = SourceConnectionError if retry else SourceError
        return error(f"START_REPLICATION failed: {message}", sqlstate=sqlstate)

    def _start_raw(self, pgconn: pq.abc.PGconn, command: bytes) -> bytes:
        """Send ``START_REPLICATION`` and read the server's answer from the socket here, up
        to its CopyBothResponse; return the bytes read after it (the stream's start)."""
        fd = pgconn.socket
        try:
            pgconn.send_query(command)  # a blocking connection: the query is sent
        except psycopg.OperationalError as exc:
            pgconn.finish()
            raise SourceConnectionError(f"START_REPLICATION could not be sent: {exc}".strip()) from exc
        buf = b""
        wait = max(self.dead_after, 60.0)
        try:
            while True:
                while len(buf) >= 5 and len(buf) >= 1 + _frame_len(buf, 1)[0]:
                    kind, end = buf[0], 1 + _frame_len(buf, 1)[0]
                    body, buf = buf[5:end], buf[end:]
                    if kind == 87:  # 'W' CopyBothResponse: the stream follows
                        return buf
                    if kind == 69:  # 'E' ErrorResponse: fields of a type byte and a C string
                        fields = {f[:1]: f[1:].decode(errors="replace") for f in body.split(b"\0") if f}
                        pgconn.finish()
                        raise self._start_failed(f"{fields.get(b'S', 'ERROR')}:  {fields.get(b'M', '')}",
                                                 fields.get(b"C"))
                    # 'N' notices and 'S' parameter status before the response: nothing to do
                if not select.select([fd], [], [], wait)[0]:
                    pgconn.finish()
                    raise SourceConnectionError(f"no answer to START_REPLICATION for {wait:.0f}s")
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    pgconn.finish()
                    raise SourceConnectionError("the server closed the connection after START_REPLICATION")
                buf += chunk
        except OSError as exc:
            pgconn.finish()
            raise SourceConnectionError(f"replication connection lost: {exc.strerror}") from exc

    def _timeouts(self, pgconn: pq.abc.PGconn) -> None:
        """Status updates and the silence watchdog follow the server's
        ``wal_sender_timeout``: a status at least every third of it (the server drops a
        receiver that stays silent for the whole of it), and a connection from which
        nothing came for twice that long, although a reply was asked for, is lost."""
        result = pgconn.exec_(b"SHOW wal_sender_timeout")
        try:
            timeout = parse_duration(result.get_value(0, 0).decode()) if result.ntuples else 0.0
        except ValueError:
            timeout = 0.0
        self.wal_sender_timeout = timeout
        if timeout > 0:
            self.status_interval = min(STATUS_INTERVAL, max(timeout / 3, 0.2))
            self.dead_after = max(2 * timeout, 3 * self.status_interval)

    def receive(self, timeout: float) -> tuple[bytes, int] | None:
        """Unprocessed bytes holding whole protocol messages (``d`` CopyData frames:
        type, int32 length, payload) from the position returned with them, waiting up to
        ``timeout`` for more; None when nothing arrived.  Call ``keep(buf, pos)`` with
        where processing stopped.

        Without TLS the socket is read directly, in large chunks, after libpq's own
        buffer is drained: one system call and no Python object per message is what
        lets a Python reader keep up with the walsender.  A buffer is read over several
        polls without being copied; only an incomplete last frame is joined to the next
        chunk."""
        tail, start = self._tail, self._tail_pos
        if self._has_frame(tail, start):
            return tail, start
        if self.lost:
            raise SourceConnectionError(self.lost)
        try:
            with self._lock:
                chunk = self._read_socket(timeout) if self._raw else self._read_libpq(timeout)
        except psycopg.OperationalError as exc:
            raise SourceConnectionError(f"replication connection lost: {exc}".strip()) from exc
        if not chunk:
            return None
        self.last_data = time.monotonic()
        return (tail[start:] + chunk if start < len(tail) else chunk), 0

    def keepalive(self, flush_lsn: int) -> None:
        """Per poll and during waits (any thread): a status update when one is due,
        asking for a reply when the server has been silent; and the watchdog: raise
        ``SourceConnectionError`` when nothing came for ``dead_after`` seconds (a
        half-open connection, a stopped server process)."""
        if self.lost:
            raise SourceConnectionError(self.lost)
        now = time.monotonic()
        silent = now - self.last_data
        if silent >= self.dead_after and not self._pending():
            self.lost = (f"nothing from the server for {silent:.0f}s, not even a reply to a keepalive "
                         f"(wal_sender_timeout {self.wal_sender_timeout:g}s): the replication "
                         f"connection is presumed lost")
            raise SourceConnectionError(self.lost)
        if now - self.last_status >= self.status_interval:
            self.send_status(flush_lsn, reply=silent >= self.status_interval)

    def _pending(self) -> bool:
        """Are bytes waiting that nobody read yet (the reader waits for its sinks)?
        Then the server is there."""
        if self._tail_pos < len(self._tail) or self.pgconn is None:
            return True
        try:
            waiting = bool(select.select([self._fd], [], [], 0)[0])
        except (OSError, ValueError):
            return False
        if waiting:
            self.last_data = time.monotonic()
        return waiting

    def keep(self, buf: bytes, pos: int) -> None:
        self._tail, self._tail_pos = (buf, pos) if pos < len(buf) else (b"", 0)

    @staticmethod
    def _has_frame(buf: bytes, pos: int = 0) -> bool:
        return len(buf) >= pos + 5 and len(buf) >= pos + 1 + _frame_len(buf, pos + 1)[0]

    def _read_socket(self, timeout: float) -> bytes:
        try:
            try:
                return os.read(self._fd, 1 << 20) or self._closed()
            except BlockingIOError:
                pass
            if not select.select([self._fd], [], [], timeout)[0]:
                return b""
            return os.read(self._fd, 1 << 20) or self._closed()
        except BlockingIOError:
            return b""
        except OSError as exc:  # e.g. a reset when the walsender was killed
            raise SourceConnectionError(f"replication connection lost: {exc.strerror}") from exc

    def _closed(self) -> bytes:
        raise SourceConnectionError("the server closed the replication connection")

    def _read_libpq(self, timeout: float, wait: bool = True) -> bytes:
        pgconn = self.pgconn
        frames = []
        while True:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes > 0:
                frames.append(b"d" + _frame_head(nbytes + 4) + bytes(data))
                continue
            if nbytes == -1:
                result = pgconn.get_result()
                message = (result.error_message if result else b"").decode(errors="replace").strip()
                raise SourceConnectionError(f"the server ended the replication stream {message}".strip())
            if frames or not wait or timeout <= 0:
                return b"".join(frames)
            if not select.select([pgconn.socket], [], [], timeout)[0]:
                return b""
            pgconn.consume_input()
            wait = False

    def send_status(self, flush_lsn: int, reply: bool = False) -> None:
        now = int(time.time() * 1_000_000) - PG_EPOCH_US
        write = max(self.received_lsn, flush_lsn)
        with self._lock:
            pgconn = self.pgconn
            if pgconn is None:
                return
            message = _status(b"r", write, flush_lsn, flush_lsn, now, 1 if reply else 0)
            if self._raw:
                self._write_socket(b"d" + _frame_head(len(message) + 4) + message)
            else:
                try:
                    pgconn.put_copy_data(message)
                    pgconn.flush()
                except psycopg.OperationalError as exc:
                    raise SourceConnectionError(f"replication connection lost: {exc}".strip()) from exc
            self.last_status = time.monotonic()

    def _write_socket(self, frame: bytes) -> None:
        """Where the socket is read directly, write to it directly too: when a write
        fails, libpq reads whatever input is waiting into its own buffer (to find the
        server's error), and those bytes would be missing from the stream we read.  A
        failed write is a lost connection here, at once."""
        data = self._out + frame
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # EPIPE, ECONNRESET: the server is gone
            raise SourceConnectionError(f"replication connection lost: {exc.strerror}") from exc
        self._out = data[sent:]  # a partial write: the rest goes first next time

    def close(self) -> None:
        with self._lock:
            if self.pgconn is not None:
                self.pgconn.finish()
                self.pgconn = None
