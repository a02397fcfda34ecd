"""Two binlog readers with one server_id: the server keeps only the newest, so two cdc runs
of one source (or two sources sharing a server_id) used to kick each other off for ever,
with a WARNING a second and nothing else."""

from __future__ import annotations

import time

import pytest

from cdc.errors import SourceConnectionError, SourceSetupError
from cdc.event import ChangeEvent

from mysql_helpers import db_of, execute, make_source


def test_a_reader_kicked_off_by_another_with_its_server_id_stops_and_says_why(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY)")
    first = make_source(mariadb_server, db, [f"{db}.t"], name="first", server_id=4377)
    first.open(None)
    second = make_source(mariadb_server, db, [f"{db}.t"], name="second", server_id=4377)
    second.open(None)
    try:
        execute(mariadb_server, db, "INSERT INTO t VALUES (1)")
        deadline = time.monotonic() + 30
        with pytest.raises(SourceSetupError) as info:
            while time.monotonic() < deadline:
                try:
                    first.poll(1.0)
                except SourceConnectionError:  # not this: it would be retried for ever
                    raise AssertionError("kicked off, and taken for a lost connection") from None
        message = str(info.value)
        assert "server_id 4377" in message and f"127.0.0.1:{mariadb_server.port}" in message
        assert "server_id:" in message  # the fix: a server_id of its own
        rows = []
        while time.monotonic() < deadline and not rows:
            rows = [e for e in second.poll(1.0) if isinstance(e, ChangeEvent)]
        assert [e.after for e in rows] == [{"id": 1}]  # the newer reader reads on
    finally:
        first.close()
        second.close()
