"""``cdc checkpoint set`` on a MariaDB source: a position the server cannot resume from
is refused with the reason, never saved (it would fail or skip changes at the next run)."""

from __future__ import annotations

import json

import pytest

from cdc.checkpoints import operations
from cdc.config import parse_config

from mysql_helpers import db_of, execute


def config(tmp_path, dsn: str):
    raw = {"sources": {"legacy": {"type": "mysql", "dsn": dsn, "tables": [f"{db_of(dsn)}.t"], "server_id": 4242,
                                  "checkpoint": {"type": "file", "path": "state/legacy.json"}}},
           "pipelines": {"p": {"source": "legacy", "sinks": [{"type": "discard"}]}}}
    return parse_config(raw, tmp_path / "pipelines.yaml", {})


def test_checkpoint_set_refuses_what_the_server_cannot_resume_from(mariadb_server, mariadb_database, tmp_path):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int primary key)", "INSERT INTO t VALUES (1)")
    with mariadb_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
        cur.execute("SELECT @@gtid_binlog_pos")
        gtid = cur.fetchone()[0]
    cfg = config(tmp_path, mariadb_server.dsn(db, user="cdc"))
    domain, server, seq = gtid.split(",")[0].split("-")
    refused = {
        '{"gtid": 5}': "gtid must be a string",
        '{"lsn": "0/1"}': "a MySQL position is",
        json.dumps({"gtid": "zzz"}): "is not a MariaDB GTID",
        json.dumps({"gtid": f"{domain}-{server}-{int(seq) + 1000}"}): "ahead of the server's binlog",
        json.dumps({"file": "binlog.999999", "pos": 4}): "ahead of the server's binlogs",
        json.dumps({"file": file, "pos": pos + 10_000}): "past the end of",
        json.dumps({"file": file, "pos": "x"}): "a byte offset",
    }
    for text, reason in refused.items():
        with pytest.raises(operations.PositionError, match=reason):
            operations.set_position(cfg, "legacy", text)
    assert operations.show(cfg, "legacy")["position"] is None, "a refused position was saved"
    good = {"gtid": gtid, "file": file, "pos": pos}
    assert operations.set_position(cfg, "legacy", json.dumps(good)) == good
