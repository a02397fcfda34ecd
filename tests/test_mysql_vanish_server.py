"""MySQL/MariaDB: a binlog position saved against one server, resumed against another (the dsn
pointed elsewhere, or the data directory made again).  A file, offset and GTID mean nothing on
another server's binlog: cdc refuses, naming both servers; a failover replica of the same
servers (it holds the checkpoint's transactions, replicated) is resumed by GTID as before.
Against real MariaDB 10.11 servers; see docs/guarantees.md."""

from __future__ import annotations

import time

import pytest

from cdc.errors import PositionLostError
from cdc.event import ChangeEvent, Commit

from mysql_helpers import db_of, execute, make_source, preflight
from servers import MariaDBServer


def _read(source, count: int, timeout: float = 30.0) -> tuple[list[ChangeEvent], dict]:
    """``count`` change events, and the position of the commit after the last one."""
    events: list[ChangeEvent] = []
    position: dict = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (len(events) < count or not position):
        for item in source.poll(0.2):
            if isinstance(item, Commit):
                position = item.position
            else:
                events.append(item)
                position = {}
    assert len(events) >= count, f"got {len(events)} of {count}"
    return events, position


def _checkpoint_on(server, db: str, rows: int = 3) -> dict:
    """A checkpoint saved reading ``server``: table ``db.t`` with ``rows`` rows read."""
    server.create_database(db)
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY, note varchar(20))")
    source = make_source(server, db, [f"{db}.t"])
    source.open(None)
    try:
        execute(server, db, *[f"INSERT INTO t VALUES ({i}, 'first')" for i in range(1, rows + 1)])
        _, position = _read(source, rows)
    finally:
        source.close()
    return position


def _busy(server, db: str, transactions: int) -> None:
    """``db.t`` on ``server``, and enough transactions for its GTIDs to pass the checkpoint's."""
    server.create_database(db)
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY, note varchar(20))",
            *[f"INSERT INTO t VALUES ({100 + i}, 'other')" for i in range(transactions)])


def _refused(server, db: str, position: dict) -> str:
    source = make_source(server, db, [f"{db}.t"])
    try:
        with pytest.raises(PositionLostError) as raised:
            source.open(position)
            _read(source, 1, timeout=3)  # before: it resumed and read the other server's rows
    finally:
        source.close()
    return str(raised.value)


def test_a_checkpoint_saved_reading_another_server_is_refused(mariadb_server):
    db = "moved"
    with MariaDBServer() as first:
        position = _checkpoint_on(first, db)
        first_port = first.port
    assert position["server"]["server_id"] == 1 and position["server"]["host"].endswith(f":{first_port}")
    _busy(mariadb_server, db, int(position["gtid"].split("-")[2]) + 5)
    message = _refused(mariadb_server, db, position)
    assert f":{first_port} (server_id 1)" in message and f":{mariadb_server.port} (server_id 1)" in message, message
    assert "same server_id" in message and "cdc checkpoint reset" in message and "when_needed" in message, message
    problems = preflight(mariadb_server.dsn(db, user="cdc"), [f"{db}.t"], position)  # cdc check
    assert [level for level, text in problems if f":{first_port} (server_id 1)" in text] == ["error"], problems


def test_a_checkpoint_of_a_data_directory_made_again_is_refused():
    """The same address and server_id, a new data directory (mariadb-install-db again)."""
    db = "again"
    with MariaDBServer() as before:
        position = _checkpoint_on(before, db)
        port = before.port
    with MariaDBServer(port=port) as again:
        _busy(again, db, int(position["gtid"].split("-")[2]) + 5)
        message = _refused(again, db, position)
    assert f":{port} (server_id 1)" in message and "data directory made again" in message, message


def test_a_checkpoint_without_the_server_still_resumes_and_records_it(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    source = make_source(mariadb_server, db, [f"{db}.t"])
    source.open(None)
    try:
        execute(mariadb_server, db, "INSERT INTO t VALUES (1)")
        _, position = _read(source, 1)
    finally:
        source.close()
    old = {k: v for k, v in position.items() if k != "server"}  # as cdc saved it before
    execute(mariadb_server, db, "INSERT INTO t VALUES (2)")
    source = make_source(mariadb_server, db, [f"{db}.t"])
    source.open(old)
    try:
        events, after = _read(source, 1)
    finally:
        source.close()
    assert [e.after["id"] for e in events] == [2]
    recorded = after["server"]
    assert recorded["server_id"] == 1 and recorded["host"] == position["server"]["host"], recorded
    assert recorded["gtid"] == events[0].source["gtid"] and recorded["at"] < after["pos"], recorded


def test_a_failover_to_a_replica_resumes_by_gtid():
    """A replica (server_id 2, log_slave_updates) promoted after the checkpoint: it holds the
    checkpoint's transactions in its own binlog, so cdc resumes there, with no gap."""
    with MariaDBServer() as primary, MariaDBServer(settings={"server_id": "2"}) as replica:
        with replica.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {primary.port}, "
                        "MASTER_USER = 'root', MASTER_PASSWORD = 'root', MASTER_USE_GTID = slave_pos")
            cur.execute("START SLAVE")
        position = _checkpoint_on(primary, "shop", rows=2)
        execute(primary, "shop", "INSERT INTO t VALUES (3, 'not read')")
        with primary.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos")
            (last,) = cur.fetchone()
        with replica.connect() as conn, conn.cursor() as cur:  # the promotion
            cur.execute("SELECT MASTER_GTID_WAIT(%s, 30)", (last,))
            assert cur.fetchone()[0] == 0, "the replica did not catch up"
            cur.execute("STOP SLAVE")
            cur.execute("RESET SLAVE ALL")
        execute(replica, "shop", "INSERT INTO t VALUES (4, 'on the replica')")
        source = make_source(replica, "shop", ["shop.t"])
        source.open(position)
        try:
            events, after = _read(source, 2)
        finally:
            source.close()
    assert [(e.after["id"], e.source["server_id"]) for e in events] == [(3, 1), (4, 2)]
    assert after["server"]["server_id"] == 2


def test_checkpoint_set_over_a_position_that_names_its_server(mariadb_server, mariadb_database, tmp_path):
    """The recorded server is not part of the position: `cdc checkpoint set` takes gtid, file
    and pos as before (and then the next run records the server again)."""
    import json

    from test_mysql_positions import config

    from cdc.checkpoints import operations
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = config(tmp_path, mariadb_server.dsn(db, user="cdc"))
    position = _checkpoint_on_existing(mariadb_server, db)
    operations.set_position(cfg, "legacy", json.dumps(position))
    assert operations.show(cfg, "legacy")["position"]["server"]["server_id"] == 1
    typed = {k: position[k] for k in ("gtid", "file", "pos")}
    assert operations.set_position(cfg, "legacy", json.dumps(typed)) == typed


def _checkpoint_on_existing(server, db: str) -> dict:
    source = make_source(server, db, [f"{db}.t"])
    source.open(None)
    try:
        execute(server, db, "INSERT INTO t VALUES (1)")
        return _read(source, 1)[1]
    finally:
        source.close()
