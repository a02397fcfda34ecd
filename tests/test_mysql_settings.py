"""Start-up checks: a misconfigured server or user stops the source with the setting to change."""

from __future__ import annotations

import pytest

from cdc.errors import SourceSetupError
from cdc.sources.mysql import MySQLSource

from mysql_helpers import db_of, execute, make_source
from servers import MariaDBServer


def test_misconfigured_server_names_every_setting():
    server = MariaDBServer(settings={"log_bin": None, "binlog_format": "STATEMENT",
                                     "binlog_row_image": "MINIMAL", "binlog_row_metadata": "MINIMAL"})
    with server:
        db = db_of(server.create_database("shop"))
        execute(server, db, "CREATE TABLE orders (id int PRIMARY KEY)")
        source = make_source(server, db, [f"{db}.orders"])
        with pytest.raises(SourceSetupError) as info:
            source.open(None)
    message = str(info.value)
    for setting in ("log_bin is 'OFF', must be ON", "binlog_format is 'STATEMENT', must be ROW",
                    "binlog_row_image is 'MINIMAL', must be FULL", "binlog_row_metadata is 'MINIMAL', must be FULL"):
        assert setting in message
    assert "SET GLOBAL binlog_format = 'ROW'" in message and "source legacy" in message


def test_missing_privileges_missing_table_and_own_server_id(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE USER IF NOT EXISTS 'weak'@'%' IDENTIFIED BY 'weak'",
            "GRANT SELECT ON *.* TO 'weak'@'%'")
    source = MySQLSource(dsn=f"mysql://weak:weak@127.0.0.1:{mariadb_server.port}/{db}",
                         tables=[f"{db}.nope"], server_id=1)
    with pytest.raises(SourceSetupError) as info:
        source.open(None)
    message = str(info.value)
    assert "lacks the REPLICATION SLAVE privilege" in message
    assert "lacks the REPLICATION CLIENT privilege" in message
    assert f"table {db}.nope does not exist" in message
    assert "server_id 1 is the server's own" in message


def test_the_cdc_user_passes(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE orders (id int PRIMARY KEY)")
    source = make_source(mariadb_server, db, [f"{db}.orders"])
    source.open(None)
    source.close()


def test_a_bad_dsn_is_a_config_error_with_its_key_path():
    """As ``cdc validate`` prints it: the key path once (it read ``sources.legacy.sources.legacy.dsn``)."""
    from pathlib import Path

    from cdc.config import parse_config
    from cdc.errors import ConfigError

    for dsn, says in (("postgresql://u@h/db", "mysql://"), ("mysql://u@h:notaport/db", "notaport"),
                      ("mysql://u@h/db?read_timeout=soon", "read_timeout")):
        raw = {"sources": {"legacy": {"type": "mysql", "dsn": dsn, "tables": ["db.t"], "checkpoint": {"type": "memory"}}},
               "pipelines": {"p": {"source": "legacy", "sinks": [{"type": "stdout"}]}}}
        with pytest.raises(ConfigError) as info:
            parse_config(raw, Path("c.yaml"), {})
        assert [p.path for p in info.value.problems] == ["sources.legacy.dsn"], (dsn, info.value.problems)
        assert says in info.value.problems[0].message
