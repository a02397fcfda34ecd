"""Start-up checks: the server settings and privileges binlog CDC needs.

Each problem names the setting to change; all of them are reported at once.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
import pymysql.cursors

from ...errors import SourceSetupError

__all__ = ["parse_dsn", "check", "require", "server_info", "json_columns", "missing_tables", "connect",
           "address", "no_answer", "gone"]

_REQUIRED = [  # (variable, wanted, how to set it)
    ("log_bin", "ON", "start the server with log_bin (log-bin=binlog in my.cnf)"),
    ("binlog_format", "ROW", "SET GLOBAL binlog_format = 'ROW' (and binlog_format=ROW in my.cnf)"),
    ("binlog_row_image", "FULL", "SET GLOBAL binlog_row_image = 'FULL' (and in my.cnf)"),
    ("binlog_row_metadata", "FULL",
     "SET GLOBAL binlog_row_metadata = 'FULL' (and in my.cnf); it puts column names in the binlog"),
]
# MariaDB 10.5+ shows REPLICATION CLIENT as BINLOG MONITOR.
_PRIVILEGES = {"REPLICATION SLAVE": ("REPLICATION SLAVE", "REPLICA"),
               "REPLICATION CLIENT": ("REPLICATION CLIENT", "BINLOG MONITOR")}


def parse_dsn(dsn: str) -> dict:
    """``mysql://user:pass@host:port/db`` -> PyMySQL connection settings (``db`` included)."""
    url = urlsplit(dsn)
    if url.scheme not in ("mysql", "mariadb"):
        raise ValueError("the dsn must look like mysql://user:password@host:3306/database")
    settings = {"host": url.hostname or "127.0.0.1", "port": url.port or 3306,
                "user": unquote(url.username or ""), "password": unquote(url.password or ""),
                "db": url.path.lstrip("/") or None}
    for key, values in parse_qs(url.query).items():
        settings[key] = int(values[-1]) if values[-1].isdigit() else values[-1]
        if key in _SECONDS:  # PyMySQL would fail on them with a TypeError or ValueError
            try:
                settings[key] = seconds = float(values[-1])
            except ValueError:
                seconds = 0
            if not 0 < seconds < 1e9:  # nor NaN, nor infinite
                raise ValueError(f"the dsn option {key} is a number of seconds above 0, not {values[-1]!r}")
    return settings


_SECONDS = ("connect_timeout", "read_timeout", "write_timeout")


def address(settings: dict) -> str:
    """``host:port`` of the server the settings point at (never the user or password)."""
    return f"{settings.get('host') or '127.0.0.1'}:{settings.get('port') or 3306}"


def connect(settings: dict, connect_timeout: float, read_timeout: float, write_timeout: float,
            **options) -> pymysql.Connection:
    """A side connection (not the binlog stream) whose every wait is bounded: a server that
    accepts the connection and never answers is an error after ``read_timeout``, not a wait
    for ever.  The dsn's own ``connect_timeout``, ``read_timeout`` and ``write_timeout``
    (query options) win over these."""
    params = {"connect_timeout": connect_timeout, "read_timeout": read_timeout, "write_timeout": write_timeout,
              **{k: v for k, v in settings.items() if k != "db"}, **options}
    return pymysql.connect(**params)


def timeouts(settings: dict, connect_timeout: float, read_timeout: float, write_timeout: float) -> dict:
    """The timeouts ``connect`` uses with these settings."""
    return {"connect_timeout": settings.get("connect_timeout", connect_timeout),
            "read_timeout": settings.get("read_timeout", read_timeout),
            "write_timeout": settings.get("write_timeout", write_timeout)}


def no_answer(exc: BaseException, limits: dict) -> str | None:
    """For an error of a connection made by ``connect``: ``"within N s (option)"`` when it is
    one of its timeouts (the server did not answer), else None."""
    if not isinstance(exc, pymysql.OperationalError) or not exc.args or "timed out" not in str(exc.args[-1]):
        return None
    option = {2003: "connect_timeout", 2013: "read_timeout", 2006: "write_timeout"}.get(exc.args[0])
    if option is None:
        return None
    return f"within {limits[option]:g} s ({option})"


def gone(conn: pymysql.Connection, exc: BaseException) -> bool:
    """Did ``exc`` end the connection (a timeout, a lost connection), rather than fail one
    statement? A check that goes on after it would only see more errors."""
    return isinstance(exc, pymysql.InterfaceError) or not conn.open or \
        isinstance(exc, pymysql.OperationalError) and bool(exc.args) and isinstance(exc.args[0], int) \
        and 2000 <= exc.args[0] < 3000


def server_info(conn: pymysql.Connection) -> dict:
    with conn.cursor(pymysql.cursors.Cursor) as cur:
        cur.execute("SELECT @@version, @@server_id, @@hostname, @@port")
        version, server_id, hostname, port = cur.fetchone()
        mariadb = "mariadb" in version.lower()
        gtid = True
        if not mariadb:
            cur.execute("SELECT @@global.gtid_mode")
            gtid = cur.fetchone()[0].upper() == "ON"
    return {"version": version, "mariadb": mariadb, "gtid": gtid, "server_id": int(server_id),
            "host": f"{hostname}:{port}"}


def _variable(cur, name: str) -> str | None:
    cur.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
    row = cur.fetchone()
    return None if row is None else str(row[1]).upper()


def check(conn: pymysql.Connection, tables: list[str], server_id: int, missing_ok: bool = False) -> list[str]:
    """Every problem that blocks binlog CDC, each with its fix (empty when ready).  With
    ``missing_ok`` a table that does not exist is not a problem here (a resumed source
    first reads what the binlog still holds for it, see ``MySQLSource``)."""
    problems = []
    with conn.cursor(pymysql.cursors.Cursor) as cur:
        for name, wanted, fix in _REQUIRED:
            value = _variable(cur, name)
            if value == "1" and wanted == "ON":
                value = "ON"
            if value != wanted:
                shown = "missing (server too old)" if value is None else repr(value)
                problems.append(f"{name} is {shown}, must be {wanted}: {fix}")
        cur.execute("SHOW GRANTS")
        grants = " ".join(r[0].upper() for r in cur.fetchall() if " ON *.* " in r[0].upper())
        if "ALL PRIVILEGES" not in grants:
            for privilege, spellings in _PRIVILEGES.items():
                if not any(re.search(rf"\b{s}\b", grants) for s in spellings):
                    problems.append(f"the user lacks the {privilege} privilege: "
                                    f"GRANT {privilege} ON *.* TO <user>")
        cur.execute("SELECT @@server_id")
        if int(cur.fetchone()[0]) == server_id:
            problems.append(f"server_id {server_id} is the server's own: choose another server_id "
                            f"(unique among the server's replicas)")
        if not missing_ok:
            problems += [f"table {table} does not exist" for table in missing_tables(conn, tables)]
    return problems


def missing_tables(conn: pymysql.Connection, tables: list[str]) -> list[str]:
    out = []
    with conn.cursor(pymysql.cursors.Cursor) as cur:
        for table in tables:
            db, name = table.split(".", 1)
            cur.execute("SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                        (db, name))
            if cur.fetchone() is None:
                out.append(table)
    return out


def tables_without_key(conn: pymysql.Connection, tables: list[str]) -> list[str]:
    """The existing captured tables without a primary key: a snapshot cannot copy them (it
    reads in key order).  For a ``cdc check`` warning."""
    out = []
    with conn.cursor(pymysql.cursors.Cursor) as cur:
        for table in tables:
            db, name = table.split(".", 1)
            cur.execute("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s"
                        " AND TABLE_NAME = %s AND INDEX_NAME = 'PRIMARY'", (db, name))  # as the snapshot reads it
            if cur.fetchone()[0] == 0 and table not in missing_tables(conn, [table]):
                out.append(table)
    return out


def require(conn: pymysql.Connection, tables: list[str], server_id: int, source: str,
            missing_ok: bool = False) -> None:
    problems = check(conn, tables, server_id, missing_ok)
    if problems:
        raise SourceSetupError("the MySQL/MariaDB server is not ready for CDC:\n  - " + "\n  - ".join(problems),
                               source=source)


def json_columns(conn: pymysql.Connection, tables: list[str]) -> dict[str, set[str]]:
    """MariaDB's json columns (a longtext with CHECK json_valid): ``db.table`` -> names."""
    out: dict[str, set[str]] = {}
    with conn.cursor(pymysql.cursors.Cursor) as cur:
        for table in tables:
            db, name = table.split(".", 1)
            try:
                cur.execute("SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
                            " WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s", (db, name))
            except pymysql.MySQLError:
                return out  # MySQL < 8.0.16 has no CHECK_CONSTRAINTS; MySQL json is binary anyway
            for (clause,) in cur.fetchall():
                m = re.fullmatch(r"json_valid\(`([^`]+)`\)", clause.strip(), re.IGNORECASE)
                if m:
                    out.setdefault(table, set()).add(m.group(1))
    return out
