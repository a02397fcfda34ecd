"""Target-database helpers shared by the mirror and table sinks: connect by DSN,
quote identifiers, and classify driver errors as transient or permanent."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import PermanentSinkError, SinkError, TransientSinkError

__all__ = ["Target", "connect", "sink_error", "database_of"]

# MySQL/MariaDB error codes worth retrying: lock wait, deadlock, lost/refused connection, a full disk.
_MYSQL_TRANSIENT = {1205, 1213, 2002, 2003, 2006, 2013, 2055,
                    1021, 1026, 1114}  # disk full, error writing a file, 'the table is full': space may be freed


class Target:
    """An open connection plus its dialect (``postgres`` or ``mysql``)."""

    def __init__(self, conn: Any, dialect: str) -> None:
        self.conn = conn
        self.dialect = dialect
        self.param = "%s"  # both drivers use %s placeholders

    def quote(self, name: str) -> str:
        """``schema.table`` or ``column`` as quoted identifiers (never spliced raw)."""
        q = '"' if self.dialect == "postgres" else "`"
        return ".".join(q + part.replace(q, q + q) + q for part in name.split(".", 1))

    def quote_column(self, name: str) -> str:
        q = '"' if self.dialect == "postgres" else "`"
        return q + name.replace(q, q + q) + q

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


def dialect_of(dsn: str) -> str:
    scheme = dsn.split("://", 1)[0].lower() if "://" in dsn else "postgresql"
    if scheme in ("postgres", "postgresql"):
        return "postgres"
    if scheme in ("mysql", "mariadb"):
        return "mysql"
    raise ValueError(f"unsupported database URL scheme {scheme!r} (postgresql:// or mysql://)")


def connect(dsn: str) -> Target:
    dialect = dialect_of(dsn)
    try:
        if dialect == "postgres":
            import psycopg
            from psycopg.conninfo import conninfo_to_dict, make_conninfo
            if "connect_timeout" not in conninfo_to_dict(dsn) and not os.environ.get("PGCONNECT_TIMEOUT"):
                dsn = make_conninfo(dsn, connect_timeout=10)
            return Target(psycopg.connect(dsn), dialect)
        import pymysql
        conn = pymysql.connect(**mysql_params(dsn))
        with conn.cursor() as cur:  # timestamps are exchanged in UTC, as the events carry them
            cur.execute("SET time_zone = '+00:00'")
        return Target(conn, dialect)
    except Exception as exc:
        raise sink_error(exc, "cannot connect") from exc


def database_of(dsn: str) -> str:
    """``host:port/database`` of a target DSN, for messages and for telling targets apart."""
    if dialect_of(dsn) == "mysql":
        params = mysql_params(dsn)
        return f"{params['host']}:{params['port']}/{params['database'] or ''}"
    from psycopg.conninfo import conninfo_to_dict
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "localhost")
    return f"{host}:{params.get('port') or 5432}/{params.get('dbname') or params.get('user') or ''}"


def mysql_params(dsn: str) -> dict[str, Any]:
    """PyMySQL settings from ``mysql://user:pw@host:port/db?option=value&...``: query
    options (``init_command``, ``read_timeout``, ``ssl_ca``...) are passed on as given."""
    url = urlsplit(dsn)
    params: dict[str, Any] = {"host": url.hostname or "127.0.0.1", "port": url.port or 3306,
                              "user": unquote(url.username or "root"), "password": unquote(url.password or ""),
                              "database": url.path.lstrip("/") or None, "charset": "utf8mb4",
                              "connect_timeout": 10}
    for key, value in parse_qsl(url.query, keep_blank_values=True):
        params[key] = int(value) if value.isdigit() else value
    params["autocommit"] = False  # one transaction per batch, position included
    return params


def sink_error(exc: BaseException, what: str) -> SinkError:
    """Wrap a driver error: connection trouble and deadlocks are transient."""
    if isinstance(exc, SinkError):
        return exc
    transient = isinstance(exc, OSError)
    try:
        import psycopg
        if isinstance(exc, psycopg.OperationalError):
            transient = True
    except ImportError:
        pass
    try:
        import pymysql
        if isinstance(exc, pymysql.err.MySQLError):
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            transient = code in _MYSQL_TRANSIENT or isinstance(exc, pymysql.err.InterfaceError)
    except ImportError:
        pass
    cls = TransientSinkError if transient else PermanentSinkError
    text = str(exc)
    try:
        import psycopg
        if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
            # one line: not the statement's text and caret (LINE 1: ...), nor DETAIL's row values
            text = exc.diag.message_primary
    except ImportError:
        pass
    return cls(f"{what}: {type(exc).__name__}: {text}")
