"""Who reads a MySQL/MariaDB server's binlog: the server-side sign that a source is
streamed by a ``cdc run`` the local lock cannot see (another machine, another state_dir).

cdc's binlog reader (python-mysql-replication) sends no COM_REGISTER_SLAVE, so the
server does not list it in ``SHOW SLAVE HOSTS``, and the server_id it sends with its dump
request is kept in the dump thread's session, which another session cannot read (unless
performance_schema is on, which MariaDB's default is not).  What the server shows is the
dump thread itself: ``information_schema.PROCESSLIST`` with Command ``Binlog Dump``
(MySQL with GTIDs: ``Binlog Dump GTID``), under the user that opened it.  A source's user
can see its own threads without the PROCESS privilege.  So the signs, strongest first:
a replica registered with the source's server_id, then a binlog dump opened by the
source's user (this source elsewhere, or another client reading the binlog as that user).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymysql

__all__ = ["BinlogReader", "binlog_readers", "reader_elsewhere"]

DUMP_COMMANDS = ("Binlog Dump", "Binlog Dump GTID")


@dataclass(frozen=True)
class BinlogReader:
    """A connection the server sends its binlog to."""

    client: str            # where it runs: the client's host:port (PROCESSLIST), or its reported host
    user: str | None       # the user that opened it (None: known only from SHOW SLAVE HOSTS)
    thread: int | None     # the dump thread's id (KILL), None when it is only registered
    seconds: int | None    # how long the thread has been in its state
    server_id: int | None  # known only when it registered (SHOW SLAVE HOSTS)

    def __str__(self) -> str:
        about = [f"user {self.user}" if self.user is not None else "",
                 f"server_id {self.server_id}" if self.server_id is not None else "",
                 f"thread {self.thread}" if self.thread is not None else ""]
        about = [a for a in about if a]
        return self.client + (f" ({', '.join(about)})" if about else "")


def binlog_readers(conn: pymysql.connections.Connection, user: str, server_id: int) -> list[BinlogReader]:
    """The binlog readers that may be the source with ``user`` and ``server_id``: a
    registered replica with that server_id, then the binlog dumps opened by ``user``
    (minus the connection asking).  Raises pymysql's errors (the caller decides)."""
    found: list[BinlogReader] = []
    with conn.cursor(pymysql.cursors.Cursor) as cur:
        try:  # needs REPLICATION MASTER ADMIN (MariaDB) / REPLICATION SLAVE (MySQL); optional
            cur.execute("SHOW SLAVE HOSTS")
            columns = [d[0].lower() for d in cur.description or ()]
            for row in cur.fetchall():
                values = dict(zip(columns, row))
                if int(values.get("server_id") or 0) == server_id:
                    host, port = values.get("host") or "?", values.get("port")
                    found.append(BinlogReader(f"{host}:{port}" if port else str(host), None, None, None,
                                              server_id))
        except (pymysql.err.OperationalError, pymysql.err.ProgrammingError, pymysql.err.InternalError):
            pass  # access denied: the process list still tells
        cur.execute("SELECT ID, HOST, TIME FROM information_schema.PROCESSLIST"
                    " WHERE COMMAND IN %s AND USER = %s AND ID <> CONNECTION_ID() ORDER BY ID",
                    (DUMP_COMMANDS, user))
        for thread, host, seconds in cur.fetchall():
            found.append(BinlogReader(str(host), user, int(thread), int(seconds or 0), None))
    return found


def reader_elsewhere(src: Any, say: Callable[[str], None]) -> str | None:
    """The sign, in words, that ``src`` (a MySQLSource) is read now by a ``cdc run`` the local
    lock cannot see; None when there is none or the server cannot be asked.  A reader that
    stopped a moment ago keeps its dump thread until the server's next write to it fails (up
    to two heartbeats): only a dump still there after that counts."""
    params = {k: v for k, v in src.settings.items() if k != "db"}
    user = params.get("user") or ""
    linger = min(2 * float(src.heartbeat_interval or 10.0) + 2.0, 30.0)
    try:  # a server that does not answer says nothing (the DSN's timeouts win)
        conn = pymysql.connect(**{"connect_timeout": 10, "read_timeout": 10, "write_timeout": 10, **params})
    except (pymysql.MySQLError, OSError):
        return None
    try:
        readers = binlog_readers(conn, user, src.server_id)
        deadline = time.monotonic() + linger
        if readers:
            say(f"the server sends its binlog to a client at {readers[0]}; waiting up to {linger:.0f} s to see "
                f"whether it is a reader that just stopped")
        while readers and time.monotonic() < deadline:
            time.sleep(0.5)
            readers = binlog_readers(conn, user, src.server_id)
    except (pymysql.MySQLError, OSError):
        return None
    finally:
        conn.close()
    if not readers:
        return None
    server = f"{params.get('host')}:{params.get('port')}"
    registered = [r for r in readers if r.server_id is not None]
    if registered:
        return f"a replica registered with its server_id {src.server_id} reads the binlog of {server}: {registered[0]}"
    return (f"the server {server} sends its binlog to a client at {'; '.join(str(r) for r in readers)}, opened by "
            f"the source's user, still there after {linger:.0f} s (a reader that stopped keeps its dump thread "
            f"until the server has written to it twice). cdc's reader does not tell the server its server_id, so "
            f"this is a cdc run of this source, or another client reading the binlog as {readers[0].user}: if it "
            f"is not this source (another source on this server, a replica), give source {src.name} a user of "
            f"its own")
