"""Pre-flight checks of a MySQL or MariaDB server for binlog CDC (``cdc check``).

The blocking problems are the ones ``settings.check`` finds when the source opens;
this adds what only an operator needs to hear about: GTID modes and binlog retention
against the checkpoint's age and position.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pymysql

from ...abc import Problem
from ...errors import PositionLostError, SourceConnectionError
from ...snapshot.chunk import no_key_warning
from . import settings

if TYPE_CHECKING:
    from .source import MySQLSource

__all__ = ["problems", "check_position"]

_FILE_KEYS = ("file", "log_file", "binlog_file", "log_name")

#: seconds the checks' connection waits to connect, and for each answer and send; the dsn's
#: connect_timeout, read_timeout, write_timeout win
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
WRITE_TIMEOUT = 30.0


def _connect(source: MySQLSource) -> pymysql.Connection:
    try:
        return settings.connect(source.settings, CONNECT_TIMEOUT, READ_TIMEOUT, WRITE_TIMEOUT)
    except pymysql.MySQLError as exc:
        raise _unanswered(source, exc, "while connecting") or exc


def _unanswered(source: MySQLSource, exc: BaseException, what: str) -> SourceConnectionError | None:
    """A timeout of the checks' connection, as an error naming the server and how long it waited."""
    within = settings.no_answer(exc, settings.timeouts(source.settings, CONNECT_TIMEOUT, READ_TIMEOUT,
                                                       WRITE_TIMEOUT))
    if within is None:
        return None
    return SourceConnectionError(f"the server {settings.address(source.settings)} did not answer {within} {what}: "
                                 f"it accepts connections but does not answer (stopped, hung or overloaded); "
                                 f"nothing was checked", source=source.name)


def problems(source: MySQLSource, position: dict | None, checkpoint_age: float | None) -> list[Problem]:
    """``[(level, message)]``; level ``error`` blocks a run, ``warning`` does not."""
    conn = _connect(source)
    try:
        return _problems(source, conn, position, checkpoint_age)
    except pymysql.MySQLError as exc:
        raise _unanswered(source, exc, "during the checks") or exc
    finally:
        conn.close()


def _problems(source: MySQLSource, conn: pymysql.Connection, position: dict | None,
              checkpoint_age: float | None) -> list[Problem]:
    out: list[Problem] = [("error", p) for p in settings.check(conn, source.tables, source.server_id)]
    if source.snapshot != "never":
        out += [("warning", no_key_warning(table))
                for table in settings.tables_without_key(conn, source.tables)]
    info = settings.server_info(conn)
    with conn.cursor() as cur:
        cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'gtid_mode', "
                    "'enforce_gtid_consistency', 'gtid_strict_mode', 'binlog_expire_logs_seconds', "
                    "'expire_logs_days')")
        v = {name.lower(): str(value) for name, value in cur.fetchall()}
        logs = []
        purged = None
        if v.get("log_bin", "").upper() in ("ON", "1"):
            try:
                cur.execute("SHOW BINARY LOGS")
                logs = [row[0] for row in cur.fetchall()]
                gtid = (position or {}).get("gtid")
                if logs and isinstance(gtid, str) and gtid:
                    purged = _purged_gtids(cur, gtid, logs[0], info["mariadb"])
            except pymysql.MySQLError as exc:
                if settings.gone(conn, exc):  # a timeout: not a missing privilege
                    raise
                # no BINLOG MONITOR: reported above as a missing privilege
    if position and info["mariadb"] and logs:
        source.info = info
        try:
            source._same_binlog(conn, position)  # read from another server's binlog?
        except PositionLostError as exc:
            out.append(("warning" if source.snapshot == "when_needed" else "error", str(exc)))
        except pymysql.MySQLError as exc:
            if settings.gone(conn, exc):
                raise
    out.extend(_gtid_modes(v, info["mariadb"]))
    out.extend(_retention(v, checkpoint_age, position, logs, purged, source.snapshot == "when_needed"))
    return out


def _purged_gtids(cur, gtid: str, oldest: str, mariadb: bool) -> str | None:
    """What of the transactions after the GTID position ``gtid`` was purged, or None.
    MariaDB: the oldest binlog's Gtid_list (the last GTID of each domain before it) must
    not be ahead of the position in any domain; MySQL: ``gtid_purged`` must be in it."""
    if not mariadb:
        cur.execute("SELECT GTID_SUBSET(@@global.gtid_purged, %s), @@global.gtid_purged", (gtid,))
        inside, purged = cur.fetchone()
        return None if inside else f"the server purged {purged}"
    cur.execute(f"SHOW BINLOG EVENTS IN '{oldest}' LIMIT 4")
    listed = next((row[5] for row in cur.fetchall() if row[2] == "Gtid_list"), None)
    if listed is None:
        return None
    have: dict[str, int] = {}
    for part in gtid.replace(" ", "").split(","):
        if _MARIADB_GTID.match(part):
            domain, _, seq = part.split("-")
            have[domain] = max(have.get(domain, 0), int(seq))
    for part in listed.strip("[]").replace(" ", "").split(","):
        if _MARIADB_GTID.match(part):
            domain, _, seq = part.split("-")
            if int(seq) > have.get(domain, 0):
                return f"the oldest binlog kept, {oldest}, starts after {part}"
    return None


_MARIADB_GTID = re.compile(r"^\d+-\d+-\d+$")


def check_position(source: MySQLSource, position: dict) -> None:
    """A position an operator typed: the keys and types cdc writes, a binlog file the
    server still has, and nothing ahead of what the server has written."""
    unknown = set(position) - {"gtid", "file", "pos", "server"}  # server: recorded by cdc, not checked here
    if unknown or not ({"gtid", "file"} & set(position)):
        raise ValueError('a MySQL position is {"gtid": "0-1-42", "file": "binlog.000003", "pos": 81234} '
                         f"(gtid, or file and pos), not {sorted(position)}")
    gtid, file, pos = position.get("gtid"), position.get("file"), position.get("pos")
    if gtid is not None and not isinstance(gtid, str):
        raise ValueError(f"gtid must be a string, not {gtid!r}")
    if file is not None and (not isinstance(file, str) or not isinstance(pos, int) or isinstance(pos, bool)
                             or pos < 4):
        raise ValueError(f"file must be a binlog name and pos a byte offset of at least 4, not {file!r}, {pos!r}")
    conn = _connect(source)
    try:
        info = settings.server_info(conn)
        with conn.cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            logs = {row[0]: int(row[1]) for row in cur.fetchall()}
            if gtid and info["mariadb"]:
                cur.execute("SELECT @@gtid_binlog_pos")
                server = {g.split("-")[0]: g for g in (cur.fetchone()[0] or "").split(",") if g}
            elif gtid:
                cur.execute("SELECT GTID_SUBSET(%s, @@gtid_executed)", (gtid,))
                if not cur.fetchone()[0]:
                    raise ValueError(f"gtid {gtid} is not a subset of the server's executed GTIDs: it is ahead "
                                     f"of the server, or from another server")
    except pymysql.MySQLError as exc:
        unanswered = _unanswered(source, exc, "while checking the position")
        if unanswered is not None or settings.gone(conn, exc):  # not an answer about the position
            raise unanswered or SourceConnectionError(f"checking the position: {exc.args[-1]} (server "
                                                      f"{settings.address(source.settings)})",
                                                      source=source.name) from None
        raise ValueError(f"the server refused to check it: {exc.args[-1]}") from None
    finally:
        conn.close()
    if gtid and info["mariadb"]:
        for part in gtid.split(","):
            if not _MARIADB_GTID.match(part.strip()):
                raise ValueError(f"{part!r} is not a MariaDB GTID (domain-server-sequence, e.g. 0-1-42)")
            domain, _, seq = part.strip().split("-")
            have = server.get(domain)
            if have is None or int(seq) > int(have.split("-")[2]):
                raise ValueError(f"gtid {part} is ahead of the server's binlog (gtid_binlog_pos "
                                 f"{','.join(server.values()) or 'empty'})")
    if file is not None:
        if file not in logs:
            names = sorted(logs)
            where = "ahead of the server's binlogs" if names and file > names[-1] else "purged, or never existed"
            raise ValueError(f"binlog {file} is {where} (the server has {names[0] if names else '-'} .. "
                             f"{names[-1] if names else '-'})")
        assert pos is not None  # an int of at least 4 whenever file is set (checked above)
        if pos > logs[file]:
            raise ValueError(f"pos {pos} is past the end of {file} ({logs[file]} bytes)")


def _gtid_modes(v: dict, mariadb: bool) -> list[Problem]:
    if mariadb:
        if v.get("gtid_strict_mode", "OFF").upper() != "ON":
            return [("warning", "gtid_strict_mode is OFF: SET GLOBAL gtid_strict_mode = ON "
                                "(GTID positions survive failover)")]
    elif v.get("gtid_mode", "OFF").upper() != "ON" or v.get("enforce_gtid_consistency", "OFF").upper() != "ON":
        return [("warning", f"gtid_mode is {v.get('gtid_mode', 'OFF')}: set gtid_mode=ON and "
                            "enforce_gtid_consistency=ON in my.cnf (GTID positions survive failover)")]
    return []


def _retention(v: dict, age: float | None, position: dict | None, logs: list[str], purged: str | None = None,
               when_needed: bool = False) -> list[Problem]:
    """Binlog retention against the checkpoint.  A lost position is an error, but with
    ``snapshot: when_needed`` a warning: cdc run then copies every table again."""
    seconds = float(v.get("binlog_expire_logs_seconds") or 0)
    if not seconds:
        seconds = float(v.get("expire_logs_days") or 0) * 86400
    out: list[Problem] = []
    lost = "warning" if when_needed else "error"
    again = (". With snapshot: when_needed, cdc run starts over from the current end of the binlog and copies "
             "every table in tables: again") if when_needed else ""
    if position and not position.get("gtid"):  # a GTID position resumes from any binlog that holds it
        name = next((position[k] for k in _FILE_KEYS if isinstance(position.get(k), str)), None)
        if name and logs and name not in logs:
            out.append((lost, f"the checkpoint's binlog {name} was purged (oldest kept: {logs[0]}): "
                              f"changes were lost; cdc checkpoint reset and re-snapshot{again}"))
    elif position and purged:
        out.append((lost, f"the checkpoint's GTID position {position['gtid']} was purged ({purged}): changes "
                          f"were lost; cdc checkpoint reset and re-snapshot{again}"))
    if not seconds:
        out.append(("warning", "binlogs are never expired (binlog_expire_logs_seconds = 0): "
                               "watch the disk, or set a retention longer than your longest outage"))
    elif age is not None and age > seconds:
        out.append((lost, f"the checkpoint is {age / 3600:.1f} h old but binlogs are kept "
                          f"{seconds / 3600:.1f} h: its position may be purged; raise "
                          f"binlog_expire_logs_seconds or reset the checkpoint{again}"))
    elif age is not None and age > seconds / 2:
        out.append(("warning", f"the checkpoint is {age / 3600:.1f} h old, over half the binlog "
                               f"retention ({seconds / 3600:.1f} h): start the pipeline soon"))
    return out
