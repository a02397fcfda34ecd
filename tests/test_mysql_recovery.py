"""Server restart and SIGKILL of ``cdc run``: no gap, no duplicate with a different id.

Both tests use a private MariaDB, because they restart it or write a lot to it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cdc.errors import SourceConnectionError
from cdc.event import Commit

from mysql_helpers import execute, make_source
from servers import MariaDBServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def private_mariadb():
    with MariaDBServer() as server:
        yield server


def _drain(source, seen: list, commits: list, until, timeout: float = 120.0) -> None:
    """Poll like the runner does: on a lost connection, reopen at the last commit."""
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        try:
            items = source.poll(0.2)
        except SourceConnectionError:
            source.close()
            reopen_by = time.monotonic() + 60
            while True:
                try:
                    source.open(commits[-1].position if commits else None)
                    break
                except SourceConnectionError:
                    assert time.monotonic() < reopen_by, "the server did not come back"
                    time.sleep(0.5)
            continue
        for item in items:
            (commits if isinstance(item, Commit) else seen).append(item)


def test_server_restart_mid_transaction(private_mariadb):
    server = private_mariadb
    db = "restart_test"
    server.create_database(db)
    execute(server, db, "CREATE TABLE t (id int PRIMARY KEY, note varchar(50))")
    source = make_source(server, db, [f"{db}.t"], max_poll_events=300)
    source.open(None)
    seen: list = []
    commits: list = []
    try:
        execute(server, db, "INSERT INTO t VALUES (1, 'before')",
                "INSERT INTO t SELECT seq, 'big transaction' FROM seq_2_to_5001",
                "INSERT INTO t VALUES (5002, 'after')")
        _drain(source, seen, commits, lambda: len(seen) >= 1200)  # part of the big transaction
        assert len(seen) < 5001, "the restart should happen inside the big transaction"
        server.restart()
        execute(server, db, "INSERT INTO t VALUES (5003, 'after the restart')")
        _drain(source, seen, commits, lambda: len(seen) >= 5003 and seen[-1].after["id"] == 5003)
    finally:
        source.close()
    ids = [e.after["id"] for e in seen]
    assert sorted(ids) == list(range(1, 5004)), "no gap and no duplicate"
    assert len({e.id for e in seen}) == len(seen)


# ---- SIGKILL of `cdc run` while a writer commits -----------------------------------------

WRITES = 20_000
CONFIG = """\
sources:
  legacy:
    type: mysql
    dsn: mysql://cdc:cdc@127.0.0.1:{port}/{db}
    server_id: 4201
    tables: [{db}.orders]
    checkpoint: {{type: file, path: state/legacy.json}}
pipelines:
  copy:
    source: legacy
    sinks:
      - {{type: file, path: out/orders.jsonl, batch_size: 500}}
"""


def _writer(server, db: str, stop: threading.Event, done: list) -> None:
    """Small transactions of inserts, updates and deletes; `done` records each committed change."""
    rng = random.Random(7)
    conn = server.connect(db)
    try:
        with conn.cursor() as cur:
            n = 0
            while n < WRITES and not stop.is_set():
                changes = []
                cur.execute("BEGIN")
                for _ in range(rng.randint(1, 8)):
                    n += 1
                    cur.execute("INSERT INTO orders VALUES (%s, %s)", (n, f"v{n}"))
                    changes.append(("c", n))
                    if n % 5 == 0:
                        cur.execute("UPDATE orders SET v = %s WHERE id = %s", (f"u{n}", n - 1))
                        changes.append(("u", n - 1))
                    if n % 11 == 0:
                        cur.execute("DELETE FROM orders WHERE id = %s", (n - 2,))
                        changes.append(("d", n - 2))
                cur.execute("COMMIT")
                done.extend(changes)
                time.sleep(0.004)  # spread the writes over ~20 s, so the kills land among them
    finally:
        conn.close()


def _start(config: Path, log) -> subprocess.Popen:
    cdc = ROOT / ".venv" / "bin" / "cdc"
    command = [str(cdc)] if cdc.exists() else [sys.executable, "-m", "cdc"]
    return subprocess.Popen([*command, "run", str(config)], cwd=config.parent, stdout=log, stderr=log)


def test_sigkill_during_writes_loses_nothing(private_mariadb, tmp_path):
    server = private_mariadb
    db = "crash_test"
    server.create_database(db)
    execute(server, db, "CREATE TABLE orders (id int PRIMARY KEY, v varchar(20))",
            "CREATE TABLE ping (id int PRIMARY KEY)")
    config = tmp_path / "pipelines.yaml"
    config.write_text(CONFIG.format(port=server.port, db=db))
    out = tmp_path / "out" / "orders.jsonl"
    log = open(tmp_path / "cdc.log", "ab")
    proc = _start(config, log)
    deadline, ping = time.monotonic() + 30, 0
    while not (tmp_path / "state" / "legacy.json").exists():  # started: it saved its first position
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "cdc.log").read_text()
        ping += 1
        execute(server, db, f"INSERT INTO ping VALUES ({ping})")  # not captured, but a commit to save
        time.sleep(0.3)
    stop, done = threading.Event(), []
    writer = threading.Thread(target=_writer, args=(server, db, stop, done))
    writer.start()
    kills, rng = 0, random.Random(11)
    try:
        while writer.is_alive():
            time.sleep(rng.uniform(0.5, 3.0))
            if not writer.is_alive():
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = _start(config, log)
        writer.join()
        expected = done
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if out.exists() and out.read_text().count("\n") >= len(expected):
                break
            time.sleep(1)
        time.sleep(2)  # anything still arriving would be a duplicate
    finally:
        stop.set()
        writer.join()
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
    events = [json.loads(line) for line in out.read_text().splitlines()]
    first: dict = {}
    changes = []
    for e in events:
        row = e["after"] or e["before"]
        change = (e["op"], row["id"], e["id"])
        if e["id"] in first:
            assert first[e["id"]] == change, "a duplicate carries the id of its first copy"
            continue
        first[e["id"]] = change
        changes.append(change[:2])
    print(f"{kills} kills, {len(done)} committed changes, {len(events) - len(first)} redelivered duplicates")
    assert kills >= 5 and len(done) >= WRITES
    assert changes == expected, "every committed change, once, in commit order"


def test_table_ids_reused_after_a_server_restart(private_mariadb):
    """MariaDB numbers table ids from zero again after a restart: a row of a table that is
    not captured must never come out under a captured table's name."""
    server = private_mariadb
    server.create_database("d")
    execute(server, "d", "CREATE TABLE cap (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE other (id INT PRIMARY KEY, v INT)")
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        file, size = cur.fetchall()[-1][:2]
    server.restart()
    execute(server, "d", "INSERT INTO cap VALUES (1, 1)")
    server.restart()
    execute(server, "d", "INSERT INTO other VALUES (99, 99)", "INSERT INTO cap VALUES (2, 2)")
    source = make_source(server, "d", ["d.cap"], name="reuse", server_id=4311)
    source.open({"file": file, "pos": int(size)})
    rows: list = []
    deadline = time.monotonic() + 30
    try:
        while len(rows) < 2 and time.monotonic() < deadline:
            rows += [e for e in source.poll(0.2) if not isinstance(e, Commit)]
        rows += [e for e in source.poll(0.5) if not isinstance(e, Commit)]
    finally:
        source.close()
    assert [(e.table, e.after) for e in rows] == [("d.cap", {"id": 1, "v": 1}), ("d.cap", {"id": 2, "v": 2})]
