"""A private MariaDB server with a row-based, GTID binlog."""

from __future__ import annotations

import shutil

from cdc.demo.server import HOST, Server, find_binary

USERS = {"root": "root", "cdc": "cdc"}

# Runs at every start (idempotent), kept out of the binlog.
INIT_SQL = """\
SET sql_log_bin = 0;
CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY 'root';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY 'cdc';
GRANT SELECT, RELOAD, SHOW DATABASES, LOCK TABLES, REPLICATION SLAVE, REPLICATION CLIENT
      ON *.* TO 'cdc'@'%';
"""


class MariaDBServer(Server):
    """`MariaDBServer(port=None, data_dir=None, settings=None)`.

    Users: `root`/`root` (everything) and `cdc`/`cdc` (SELECT + replication).
    `settings` override (or, with None, drop) the mariadbd options below,
    e.g. `{"binlog_format": "STATEMENT"}` or `{"log_bin": None}`.
    """

    name = "mariadb"
    system_user = "mysql"
    demote = False  # mariadbd switches to --user itself
    defaults = {
        "bind_address": HOST,
        "skip_name_resolve": "ON",
        "character_set_server": "utf8mb4",
        "log_bin": "binlog",
        "binlog_format": "ROW",
        "binlog_row_image": "FULL",
        "binlog_row_metadata": "FULL",
        "server_id": "1",
        "gtid_strict_mode": "ON",
        "log_slave_updates": "ON",
        "innodb_buffer_pool_size": "64M",
        "innodb_flush_log_at_trx_commit": "2",
    }

    def __init__(self, port=None, data_dir=None, settings: dict | None = None):
        super().__init__(port, data_dir)
        overrides = {k.replace("-", "_"): v for k, v in (settings or {}).items()}
        self.settings = {**self.defaults, **overrides}
        self.datadir = self.data_dir / "data"
        self.socket = self.data_dir / "mariadb.sock"
        self.tmpdir = self.data_dir / "tmp"  # private: concurrent bootstraps collide in a shared /tmp

    def _user_flag(self) -> list[str]:
        return [f"--user={self.user}"] if self.user else []

    def init(self) -> None:
        init_sql = self.data_dir / "init.sql"
        init_sql.write_text(INIT_SQL)
        self.tmpdir.mkdir(exist_ok=True)
        if self.user:
            shutil.chown(init_sql, self.user, self.user)
            shutil.chown(self.tmpdir, self.user, self.user)
        if (self.datadir / "mysql").exists():
            return
        self.run([find_binary("mariadb-install-db"), "--no-defaults", *self._user_flag(),
                  f"--datadir={self.datadir}", f"--tmpdir={self.tmpdir}", "--skip-test-db"])

    def command(self) -> list[str]:
        args = [find_binary("mariadbd"), "--no-defaults", *self._user_flag(),
                f"--datadir={self.datadir}", f"--tmpdir={self.tmpdir}", f"--socket={self.socket}",
                f"--port={self.port}",
                f"--pid-file={self.data_dir / 'mariadb.pid'}", f"--init-file={self.data_dir / 'init.sql'}"]
        for key, value in self.settings.items():
            if value is not None:
                args.append(f"--{key.replace('_', '-')}={value}")
        return args

    def dsn(self, db: str = "", user: str = "root") -> str:
        return f"mysql://{user}:{USERS[user]}@{HOST}:{self.port}/{db}"

    def connect(self, db: str | None = None, user: str = "root", **kwargs):
        """A PyMySQL connection (autocommit on)."""
        import pymysql

        return pymysql.connect(host=HOST, port=self.port, user=user, password=USERS[user],
                               database=db, autocommit=True, **kwargs)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name; returns its DSN."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        return self.dsn(name)
