"""A private PostgreSQL server with logical decoding enabled."""

from __future__ import annotations

import glob
import os
import shutil
import signal

from .server import HOST, Server, find_binary

PG_HBA = """\
local all         all                trust
host  all         all  127.0.0.1/32  trust
local replication all                trust
host  replication all  127.0.0.1/32  trust
"""


def pg_bindir() -> str:
    """Directory of postgres/initdb: $CDC_PG_BIN, the newest /usr/lib/postgresql/*/bin, or PATH."""
    if os.environ.get("CDC_PG_BIN"):
        return os.environ["CDC_PG_BIN"]
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    return versions[-1] if versions else os.path.dirname(find_binary("postgres"))


class PostgresServer(Server):
    """`PostgresServer(port=None, data_dir=None, settings=None)`.

    Trust auth for everyone on 127.0.0.1 and the unix socket in the data dir,
    replication included. `settings` override (or, with None, drop) the
    postgresql.conf defaults below, e.g. `{"wal_level": "replica"}`.
    """

    name = "postgres"
    system_user = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: don't wait for clients to leave
    defaults = {
        "listen_addresses": HOST,
        "wal_level": "logical",
        "max_replication_slots": "100",
        "max_wal_senders": "100",
        "fsync": "off",
    }

    def __init__(self, port=None, data_dir=None, settings: dict | None = None):
        super().__init__(port, data_dir)
        self.settings = {**self.defaults, **(settings or {})}
        self.pgdata = self.data_dir / "pgdata"
        self.bindir = pg_bindir()

    def init(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.run([f"{self.bindir}/initdb", "-D", str(self.pgdata), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8", "--locale=C"])
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(PG_HBA)
        if self.user:
            shutil.chown(hba, self.user, self.user)

    def command(self) -> list[str]:
        args = [f"{self.bindir}/postgres", "-D", str(self.pgdata), "-p", str(self.port),
                "-c", f"unix_socket_directories={self.data_dir}"]
        for key, value in self.settings.items():
            if value is not None:
                args += ["-c", f"{key}={value}"]
        return args

    def ready(self) -> bool:
        import psycopg

        if not super().ready():
            return False
        try:
            psycopg.connect(self.dsn(), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:  # e.g. "the database system is starting up"
            return False

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@{HOST}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)
