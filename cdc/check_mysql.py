"""Pre-flight checks of a MySQL or MariaDB server for binlog CDC (used by ``cdc check``).

Written against the server, not the MySQL source's code: it needs only a PyMySQL
connection, the checkpoint's age and position.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

__all__ = ["mysql_problems", "connect_params"]

WANT = {"log_bin": "ON", "binlog_format": "ROW", "binlog_row_image": "FULL", "binlog_row_metadata": "FULL"}
_FILE_KEYS = ("file", "log_file", "binlog_file", "log_name")


def connect_params(options: dict) -> dict:
    """PyMySQL ``connect`` arguments from a source's options (``dsn`` or host/port/user/...)."""
    params: dict = {}
    dsn = options.get("dsn") or options.get("url")
    if dsn:
        url = urlsplit(dsn)
        params = {"host": url.hostname or "127.0.0.1", "port": url.port or 3306,
                  "user": unquote(url.username or ""), "password": unquote(url.password or "")}
    for key in ("host", "port", "user", "password"):
        if options.get(key) is not None:
            params[key] = options[key]
    params.setdefault("host", "127.0.0.1")
    params.setdefault("port", 3306)
    return params


def mysql_problems(conn, checkpoint_age_s: float | None = None,
                   position: dict | None = None) -> list[tuple[str, str]]:
    """``[(level, message)]``; level ``error`` blocks a run, ``warning`` does not."""
    out: list[tuple[str, str]] = []
    with conn.cursor() as cur:
        cur.execute("SELECT @@version")
        version = cur.fetchone()[0]
        mariadb = "mariadb" in version.lower()
        cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', "
                    "'binlog_row_image', 'binlog_row_metadata', 'server_id', 'gtid_mode', "
                    "'enforce_gtid_consistency', 'gtid_strict_mode', 'binlog_expire_logs_seconds', "
                    "'expire_logs_days')")
        v = {name.lower(): str(value) for name, value in cur.fetchall()}
        cur.execute("SHOW GRANTS FOR CURRENT_USER()")
        grants = " ".join(row[0] for row in cur.fetchall()).upper()
        logs = []
        if v.get("log_bin", "").upper() == "ON":
            try:
                cur.execute("SHOW BINARY LOGS")
                logs = [row[0] for row in cur.fetchall()]
            except Exception:
                pass
    server = "MariaDB" if mariadb else "MySQL"
    for name, want in WANT.items():
        have = v.get(name)
        if have is None:
            out.append(("error" if name != "binlog_row_metadata" else "warning",
                        f"{name} is not supported by {server} {version}: upgrade (MySQL >= 8.0.14, "
                        f"MariaDB >= 10.5) so the binlog carries column names"))
        elif have.upper() != want:
            fix = (f"set {name}={want if name != 'log_bin' else 'binlog'} under [mysqld] in my.cnf and restart"
                   if name == "log_bin" else
                   f"SET GLOBAL {name} = '{want}' and set {name}={want} under [mysqld] in my.cnf")
            out.append(("error", f"{name} is {have}, must be {want}: {fix}"))
    if v.get("server_id", "0") == "0":
        out.append(("error", "server_id is 0: set server_id to a unique non-zero value in my.cnf and restart"))
    if mariadb:
        if v.get("gtid_strict_mode", "OFF").upper() != "ON":
            out.append(("warning", "gtid_strict_mode is OFF: SET GLOBAL gtid_strict_mode = ON "
                                   "(GTID positions survive failover)"))
    elif v.get("gtid_mode", "OFF").upper() != "ON" or v.get("enforce_gtid_consistency", "OFF").upper() != "ON":
        out.append(("warning", f"gtid_mode is {v.get('gtid_mode', 'OFF')}: set gtid_mode=ON and "
                               "enforce_gtid_consistency=ON in my.cnf (GTID positions survive failover)"))
    out.extend(_privileges(grants, mariadb))
    out.extend(_retention(v, checkpoint_age_s, position, logs))
    return out


def _privileges(grants: str, mariadb: bool) -> list[tuple[str, str]]:
    if re.search(r"GRANT ALL PRIVILEGES ON \*\.\*", grants):
        return []
    need = {"REPLICATION SLAVE": ("REPLICATION SLAVE", "REPLICATION REPLICA"),
            "REPLICATION CLIENT": ("REPLICATION CLIENT", "BINLOG MONITOR"),
            "SELECT": ("SELECT",)}
    missing = [name for name, spellings in need.items() if not any(s in grants for s in spellings)]
    if not missing:
        return []
    what = ", ".join("BINLOG MONITOR" if mariadb and m == "REPLICATION CLIENT" else m for m in missing)
    return [("error", f"the user lacks {what}: GRANT {what} ON *.* TO '<user>'@'%'")]


def _retention(v: dict, age: float | None, position: dict | None, logs: list[str]) -> list[tuple[str, str]]:
    seconds = float(v.get("binlog_expire_logs_seconds") or 0)
    if not seconds:
        seconds = float(v.get("expire_logs_days") or 0) * 86400
    out = []
    if position:
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
