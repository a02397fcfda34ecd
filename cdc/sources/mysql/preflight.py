"""Pre-flight checks of a MySQL or MariaDB server for binlog CDC (``cdc check``).

The blocking problems are the ones ``settings.check`` finds when the source opens;
this adds what only an operator needs to hear about: GTID modes and binlog retention
against the checkpoint's age and position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pymysql

from ...abc import Problem
from . import settings

if TYPE_CHECKING:
    from .source import MySQLSource

__all__ = ["problems"]

_FILE_KEYS = ("file", "log_file", "binlog_file", "log_name")


def problems(source: MySQLSource, position: dict | None, checkpoint_age: float | None) -> list[Problem]:
    """``[(level, message)]``; level ``error`` blocks a run, ``warning`` does not."""
    params = {k: v for k, v in source.settings.items() if k != "db"}
    conn = pymysql.connect(**params, connect_timeout=10)
    try:
        out: list[Problem] = [("error", p) for p in settings.check(conn, source.tables, source.server_id)]
        info = settings.server_info(conn)
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'gtid_mode', "
                        "'enforce_gtid_consistency', 'gtid_strict_mode', 'binlog_expire_logs_seconds', "
                        "'expire_logs_days')")
            v = {name.lower(): str(value) for name, value in cur.fetchall()}
            logs = []
            if v.get("log_bin", "").upper() in ("ON", "1"):
                try:
                    cur.execute("SHOW BINARY LOGS")
                    logs = [row[0] for row in cur.fetchall()]
                except pymysql.MySQLError:
                    pass  # no BINLOG MONITOR: reported above as a missing privilege
    finally:
        conn.close()
    out.extend(_gtid_modes(v, info["mariadb"]))
    out.extend(_retention(v, checkpoint_age, position, logs))
    return out


def _gtid_modes(v: dict, mariadb: bool) -> list[Problem]:
    if mariadb:
        if v.get("gtid_strict_mode", "OFF").upper() != "ON":
            return [("warning", "gtid_strict_mode is OFF: SET GLOBAL gtid_strict_mode = ON "
                                "(GTID positions survive failover)")]
    elif v.get("gtid_mode", "OFF").upper() != "ON" or v.get("enforce_gtid_consistency", "OFF").upper() != "ON":
        return [("warning", f"gtid_mode is {v.get('gtid_mode', 'OFF')}: set gtid_mode=ON and "
                            "enforce_gtid_consistency=ON in my.cnf (GTID positions survive failover)")]
    return []


def _retention(v: dict, age: float | None, position: dict | None, logs: list[str]) -> list[Problem]:
    seconds = float(v.get("binlog_expire_logs_seconds") or 0)
    if not seconds:
        seconds = float(v.get("expire_logs_days") or 0) * 86400
    out: list[Problem] = []
    if position and not position.get("gtid"):  # a GTID position resumes from any binlog that holds it
        name = next((position[k] for k in _FILE_KEYS if isinstance(position.get(k), str)), None)
        if name and logs and name not in logs:
            out.append(("error", f"the checkpoint's binlog {name} was purged (oldest kept: {logs[0]}): "
                                 f"changes were lost; cdc checkpoint reset and re-snapshot"))
    if not seconds:
        out.append(("warning", "binlogs are never expired (binlog_expire_logs_seconds = 0): "
                               "watch the disk, or set a retention longer than your longest outage"))
    elif age is not None and age > seconds:
        out.append(("error", f"the checkpoint is {age / 3600:.1f} h old but binlogs are kept "
                             f"{seconds / 3600:.1f} h: its position may be purged; raise "
                             f"binlog_expire_logs_seconds or reset the checkpoint"))
    elif age is not None and age > seconds / 2:
        out.append(("warning", f"the checkpoint is {age / 3600:.1f} h old, over half the binlog "
                               f"retention ({seconds / 3600:.1f} h): start the pipeline soon"))
    return out
