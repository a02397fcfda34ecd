"""Snapshots of MariaDB tables (docs/snapshots.md), against a real server, read as the
replication user ``cdc`` (SELECT and replication only: no write access)."""

from __future__ import annotations

import base64
import random
import threading
import time

import pytest
from snapshot_helpers import ChunkHitter, CopyUnderKills, read_complete, rebuild, same_ids_same_content

from cdc.engine import SourceRunner

from mysql_helpers import db_of, execute, mysql_config

ROWS = 200_000


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            if predicate():
                return
        except ValueError:  # a line of a file sink caught half-written
            pass
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _config(tmp_path, server, db: str, tables: list[str], **options):
    return mysql_config(tmp_path, server.dsn(db, user="cdc"), tables, **options)


class Running:
    def __init__(self, cfg) -> None:
        self.runner = SourceRunner(cfg, "db", grace_period=10.0)
        self.code = None
        self.thread = threading.Thread(target=lambda: setattr(self, "code", self.runner.run()), daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.runner.source_connected or not self.thread.is_alive(), 30, "the source")
        assert self.thread.is_alive(), f"runner exited: {self.runner.error}"
        return self

    def __exit__(self, *exc):
        self.runner.request_stop()
        self.thread.join(30)


def test_initial_snapshot_then_stream(mariadb_server, mariadb_database, tmp_path):
    db = db_of(mariadb_database)
    execute(mariadb_server, db,
            "CREATE TABLE items (id bigint PRIMARY KEY, name varchar(50), price decimal(8,2),"
            " at datetime(6), ts timestamp(3) NULL, doc json, raw varbinary(8))",
            "INSERT INTO items SELECT seq, concat('item ', seq), seq * 1.5, '2026-01-01 00:00:01.5',"
            " '2026-01-01 00:00:02', '{\"a\": [1, 2]}', x'00ff' FROM seq_1_to_1000")
    cfg = _config(tmp_path, mariadb_server, db, [f"{db}.items"], snapshot_chunk_size=128)
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as r:
        wait_for(lambda: len(read_complete(out)) >= 1000, 60, "the snapshot rows")
        execute(mariadb_server, db, "UPDATE items SET name = 'changed' WHERE id = 5")
        wait_for(lambda: len(read_complete(out)) >= 1001, 30, "the live change")
        wait_for(lambda: r.runner.saved_position and not r.runner.saved_position["snapshot"]["queue"], 30,
                 "the checkpoint")
    events = read_complete(out)
    reads = [e for e in events if e["op"] == "r"]
    assert [e["after"]["id"] for e in reads] == list(range(1, 1001))
    live = events[-1]
    assert live["op"] == "u" and live["after"]["name"] == "changed"
    # a snapshot row has the same JSON values as the binlog's row of the same data
    assert reads[4]["after"] == {**live["before"]}, (reads[4]["after"], live["before"])
    assert reads[-1]["source"]["snapshot"] == "last"


def _executor(server, db):
    conn = server.connect(db)
    conn.autocommit(True)

    def run(statements):
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            for s, p in statements:
                s = s.replace("ON CONFLICT DO NOTHING", "").replace("INSERT INTO", "INSERT IGNORE INTO")
                if "NOT EXISTS" in s:  # MariaDB cannot read the table it updates: check first
                    cur.execute("SELECT 1 FROM snap WHERE id = %s", (p[2],))
                    if cur.fetchone():
                        continue
                    s, p = "UPDATE snap SET id = %s WHERE id = %s", p[:2]
                cur.execute(s, p)
            cur.execute("COMMIT")
    return run


def _current(runner):
    c = runner.snapshots
    if c is None or not c.queue:
        return None
    window = c.window
    after = window.entry["after"] if window is not None else c.queue[0]["after"]
    return after[0] if after else 0


def test_writer_hits_the_chunk_being_copied(mariadb_server, mariadb_database, tmp_path):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note varchar(100))",
            f"INSERT INTO snap SELECT 2 * seq, 0, concat('row ', seq) FROM seq_1_to_{ROWS}")
    chunk = 4000
    cfg = _config(tmp_path, mariadb_server, db, [f"{db}.snap"], snapshot_chunk_size=chunk)
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as r:
        with ChunkHitter(_executor(mariadb_server, db), lambda: _current(r.runner), chunk * 2, seed) as writer:
            wait_for(lambda: r.runner.snapshots.finished, 300, "the snapshot")
            time.sleep(1.0)
        assert writer.error is None, writer.error
        with mariadb_server.connect(db) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, v, note FROM snap")
            expected = {i: {"id": i, "v": v, "note": n} for i, v, n in cur.fetchall()}
        deadline = time.time() + 60
        while rebuild(read_complete(out), "snap") != expected:
            assert time.time() < deadline, "the file sink did not reach the table's state"
            time.sleep(0.5)
    events = read_complete(out)
    repeats = same_ids_same_content(events)
    reads = sum(e["op"] == "r" for e in events)
    print(f"{writer.done} writer transactions during the copy; {reads} snapshot rows, "
          f"{len(events) - reads} live changes, {repeats} repeats")
    assert writer.done > 100


def test_sigkill_during_the_copy_resumes_after_the_last_chunk(mariadb_server, mariadb_database, tmp_path, request):
    import re
    import signal
    seed = request.config.getoption("--chaos-seed")  # the chaos suite's option replays a run
    if seed is None:
        seed = random.randrange(1 << 30)
    print(f"seed {seed} (replay with: bash scripts/test {request.node.nodeid} --chaos-seed {seed})")
    rnd = random.Random(seed)
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note varchar(250))",
            f"INSERT INTO snap SELECT 2 * seq, 0, repeat('x', 200) FROM seq_1_to_{ROWS}")
    chunk = 500  # many chunks: the copy outlasts five kills on an idle machine too
    _config(tmp_path, mariadb_server, db, [f"{db}.snap"], snapshot_chunk_size=chunk, checkpoint_interval=0.2)
    path = tmp_path / "pipelines.yaml"
    checkpoint = tmp_path / "state/db.json"
    cdc = CopyUnderKills(path, checkpoint, tmp_path, rnd)
    request.addfinalizer(lambda: [(p.kill(), p.wait()) for p in cdc.procs if p.poll() is None])
    copied, runs = cdc.copied, cdc.runs

    proc = cdc.start()
    kills = 8
    with ChunkHitter(_executor(mariadb_server, db), lambda: max(copied() or 0, 0), chunk * 2, seed) as writer:
        try:
            proc = cdc.kill_loop(proc, kills, wait_for)
            wait_for(lambda: copied() == -1, 300, "the end of the copy")
        finally:
            if writer.error is not None:
                proc.kill()
    assert writer.error is None, writer.error
    with mariadb_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, v, note FROM snap")
        expected = {i: {"id": i, "v": v, "note": n} for i, v, n in cur.fetchall()}
    out = tmp_path / "out/all.jsonl"
    deadline = time.time() + 90
    while rebuild(read_complete(out), "snap") != expected:
        assert time.time() < deadline, "the file sink did not reach the table's state"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    resumed = []
    for i, name in enumerate(runs):
        text = open(name).read()
        m = re.search(r"snapshot initial of \S+\.snap (resuming after key \[(\d+)\]|from the start)", text)
        print(f"run {i}: {m.group(1) if m else 'no snapshot left to do'}")
        resumed.append(int(m.group(2)) if m and m.group(2) else None)
    assert resumed[0] is None
    assert sum(k is not None and k > 0 for k in resumed[1:]) >= 7, "restarts did not resume after a chunk"
    events = read_complete(out)
    repeats = same_ids_same_content(events)
    print(f"{kills} kills; {sum(e['op'] == 'r' for e in events)} snapshot rows for {ROWS} rows, "
          f"{repeats} repeated events, {writer.done} writer transactions")


def test_on_demand_snapshot_while_a_writer_hits_the_chunk(mariadb_server, mariadb_database, tmp_path):
    from click.testing import CliRunner

    from cdc.cli import main
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note varchar(100))",
            "INSERT INTO snap SELECT 2 * seq, 0, concat('row ', seq) FROM seq_1_to_100000")
    chunk = 3000
    cfg = _config(tmp_path, mariadb_server, db, [f"{db}.snap"], snapshot="never", snapshot_chunk_size=chunk)
    out = tmp_path / "out/all.jsonl"
    path = str(tmp_path / "pipelines.yaml")
    with Running(cfg) as r:
        bad = CliRunner().invoke(main, ["snapshot", path, "--source", "db", "--table", "snap", "--where", "id >"])
        assert bad.exit_code == 2 and "syntax" in bad.output, bad.output
        with ChunkHitter(_executor(mariadb_server, db), lambda: _current(r.runner), chunk * 2, seed) as writer:
            time.sleep(0.5)
            result = CliRunner().invoke(main, ["snapshot", path, "--source", "db", "--table", "snap"])
            assert result.exit_code == 0, result.output
            wait_for(lambda: r.runner.snapshots.progress, 30, "the copy to start")
            wait_for(lambda: r.runner.snapshots.finished, 300, "the copy")
            time.sleep(0.5)
        assert writer.error is None, writer.error
        with mariadb_server.connect(db) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, v, note FROM snap")
            expected = {i: {"id": i, "v": v, "note": n} for i, v, n in cur.fetchall()}
        deadline = time.time() + 60
        while rebuild(read_complete(out), "snap") != expected:
            assert time.time() < deadline, "the file sink did not reach the table's state"
            time.sleep(0.5)
    events = read_complete(out)
    same_ids_same_content(events)
    print(f"{sum(e['op'] == 'r' for e in events)} snapshot rows; {writer.done} writer transactions during it")


def test_rows_read_again_after_a_crash_keep_their_ids(mariadb_server, mariadb_database, tmp_path):
    """SIGKILL after a chunk reached the sink but before its progress was checkpointed
    (``after_sink_write``); a write in between moves the binlog on, so the chunk is read
    again after another GTID.  A row read again unchanged carries the id of its first
    copy; the row changed in between is a newer read (another id)."""
    import json
    import os
    import signal
    import subprocess
    import sys
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note varchar(250))",
            "INSERT INTO snap SELECT seq, 0, concat('n', seq) FROM seq_1_to_2000")
    _config(tmp_path, mariadb_server, db, [f"{db}.snap"], snapshot="initial_only", snapshot_chunk_size=100,
            snapshot_parallelism=1)
    path = tmp_path / "pipelines.yaml"

    def run(name: str, env: dict) -> tuple[int, str]:
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(path)], stdout=out, stderr=out,
                                    env={**os.environ, **env})
            try:
                code = proc.wait(120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return code, log.read_text()

    code, text = run("crash", {"CDC_CRASH_AT": "after_sink_write:4"})
    assert code == -signal.SIGKILL, text
    out = tmp_path / "out/all.jsonl"
    first = {e["after"]["id"]: e for e in read_complete(out) if e["op"] == "r"}
    saved = json.loads((tmp_path / "state/db.json").read_text())["position"]["snapshot"]["queue"][0]["after"]
    beyond = sorted(k for k in first if saved is None or k > saved[0])
    assert beyond, f"no row delivered after the checkpoint (up to {saved}): the crash came too early or late"
    changed = beyond[len(beyond) // 2]
    execute(mariadb_server, db, f"UPDATE snap SET v = 1 WHERE id = {changed}")
    code, text = run("resume", {})
    assert code == 0, text
    events = read_complete(out)
    same_ids_same_content(events)
    again = [e for e in events[len(first):] if e["op"] == "r" and e["after"]["id"] in first]
    assert {e["after"]["id"] for e in again} >= set(beyond), "the chunk after the checkpoint was not read again"
    for e in again:
        k = e["after"]["id"]
        if k == changed:
            assert e["after"]["v"] == 1 and e["id"] != first[k]["id"]
        else:
            assert e["id"] == first[k]["id"], f"row {k} read again unchanged got id {e['id']}, first {first[k]['id']}"
    with mariadb_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, v, note FROM snap")
        expected = {r[0]: {"id": r[0], "v": r[1], "note": r[2]} for r in cur.fetchall()}
    assert rebuild(events, "snap") == expected
    print(f"{len(first)} rows before the crash, checkpoint after {saved}, {len(again)} read again")


EVERY_TYPE = """CREATE TABLE every_type (
  id int PRIMARY KEY, c_tinyint tinyint, c_bool tinyint(1), c_smallint smallint, c_mediumint mediumint,
  c_int int, c_bigint bigint, c_ubigint bigint unsigned, c_decimal decimal(12,2), c_float float,
  c_double double, c_char char(3), c_varchar varchar(10), c_text text, c_long mediumtext,
  c_latin varchar(10) CHARACTER SET latin1, c_enum enum('sad', 'happy'), c_set set('a', 'b', 'c'),
  c_binary binary(4), c_varbinary varbinary(10), c_blob mediumblob, c_date date, c_datetime datetime(6),
  c_datetime0 datetime, c_timestamp timestamp(6) NULL, c_time time(6), c_year year, c_json json,
  c_json_null json NOT NULL, c_bit bit(5), c_bit64 bit(64), c_null text, c_timestamp0 timestamp NULL)"""
EVERY_ROW = [
    """(1, -128, 1, -32768, 8388607, -2147483648, 9223372036854775807, 18446744073709551615, 1234.50, 1.5,
      0.1, 'abc', 'ab', 'héllo', 'x', 'é', 'happy', 'a,c', x'00ff1000', x'00ff', x'0102', '2026-11-25',
      '2026-11-25 17:16:27.123456', '2026-11-25 17:16:27', '2026-11-25 17:16:27.5', '-12:30:00.5', 2026,
      '{"a": [1, 2.5, null]}', 'null', b'10101', b'1', NULL,
      '2026-11-25 17:16:27')""",
    # every nullable column NULL
    """(2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
      NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '[]', NULL, NULL, NULL, NULL)""",
    # zero dates, empty values, awkward floats, 4-byte unicode
    """(3, 0, 0, 0, 0, 0, -9223372036854775808, 0, -0.01, 0.1, 1e-300, '', '', '😀 "q" \\\\ \\n',
      '', '', '', '', x'00000000', '', '', '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00',
      '1970-01-01 00:00:01', '838:59:59', 0, '{"ü": "😀", "n": -1.5e10}', 'true', b'00000', b'0', '',
      '0000-00-00 00:00:00')""",
    # lengths past the one-byte (250), two-byte (65535) length prefixes; a 0xfb byte in a blob
    """(4, 127, 2, 32767, -8388608, 2147483647, 1, 1, 9999999999.99, -3.40282e38, -1.7976931348623157e308,
      'zzz', 'ééééééééé', REPEAT('ab', 200), REPEAT('xyzé', 30000), 'ÿ', 'sad', 'a,b,c', x'fbfbfbfb',
      x'fb', REPEAT(x'fb00', 40000), '9999-12-31', '9999-12-31 23:59:59.999999', '1000-01-01 00:00:00',
      '2038-01-19 03:14:07.999999', '00:00:00.000001', 1901, REPEAT('[1,', 1) || '2]', '"s"', b'11111',
      b'1111111111111111111111111111111111111111111111111111111111111111', REPEAT('t', 300),
      '2038-01-19 03:14:07')""",
]


def test_snapshot_rows_have_the_binlog_values_of_every_type(mariadb_server, mariadb_database, tmp_path):
    """The snapshot reads the server's text; the binlog decoder its row images: the same
    row gives the same JSON values either way (the delete's ``before`` is the row)."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, EVERY_TYPE, "INSERT INTO every_type VALUES " + ", ".join(EVERY_ROW),
            sql_mode="PIPES_AS_CONCAT")
    cfg = _config(tmp_path, mariadb_server, db, [f"{db}.every_type"], snapshot_chunk_size=2)
    out = tmp_path / "out/all.jsonl"
    with Running(cfg):
        wait_for(lambda: len(read_complete(out)) >= len(EVERY_ROW), 60, "the snapshot rows")
        execute(mariadb_server, db, "DELETE FROM every_type")
        wait_for(lambda: len(read_complete(out)) >= 2 * len(EVERY_ROW), 30, "the deletes")
    events = read_complete(out)
    reads = {e["after"]["id"]: e for e in events if e["op"] == "r"}
    deletes = {e["before"]["id"]: e for e in events if e["op"] == "d"}
    assert sorted(reads) == sorted(deletes) == [1, 2, 3, 4]
    for key, read in reads.items():
        assert read["after"] == deletes[key]["before"], key
    # JSON null is not SQL NULL (both are None in ``after``)
    assert [reads[k]["source"].get("json_null") for k in (1, 2, 3, 4)] == [["c_json_null"], None, None, None]
    assert reads[3]["after"]["c_date"] is None and reads[3]["after"]["c_text"] == '😀 "q" \\ \n'
    assert [reads[k]["after"]["c_timestamp0"] for k in (1, 2, 3, 4)] == [
        "2026-11-25T17:16:27Z", None, None, "2038-01-19T03:14:07Z"]
    assert len(reads[4]["after"]["c_long"]) == 120_000


def test_a_row_of_more_than_16_mib_and_a_killed_connection(mariadb_server, mariadb_database):
    """A row the server sends in several 16 MiB packets is read whole, beside short rows;
    a connection killed between chunks is a connection error, and the next chunk is read
    on a new connection."""
    from cdc.errors import SourceConnectionError

    from mysql_helpers import make_source
    db = db_of(mariadb_database)
    with mariadb_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@global.max_allowed_packet")
        (old,) = cur.fetchone()
        cur.execute("SET GLOBAL max_allowed_packet = 64 * 1024 * 1024")
    try:
        execute(mariadb_server, db, "CREATE TABLE big (id int PRIMARY KEY, doc longblob, note varchar(10))",
                "INSERT INTO big VALUES (1, x'01', 'a'), (2, REPEAT(x'fb', 17 * 1024 * 1024 + 3), 'b'),"
                " (3, NULL, 'c'), (4, REPEAT('z', 16 * 1024 * 1024 - 9), 'd')")
        reader = make_source(mariadb_server, db, [f"{db}.big"]).snapshot_reader()
        try:
            first = reader.read_chunk(f"{db}.big", None, 1, None)
            assert [k for k, _ in first.rows] == [(1,)] and not first.done
            with mariadb_server.connect() as conn, conn.cursor() as cur:
                cur.execute(f"KILL CONNECTION {reader.conn.thread_id()}")
            with pytest.raises(SourceConnectionError):
                reader.read_chunk(f"{db}.big", first.last_key, 2, None)
            rest = reader.read_chunk(f"{db}.big", first.last_key, 3, None)
        finally:
            reader.close()
    finally:
        with mariadb_server.connect() as conn, conn.cursor() as cur:
            cur.execute(f"SET GLOBAL max_allowed_packet = {old}")
    assert rest.done and [k for k, _ in rest.rows] == [(2,), (3,), (4,)]
    big, null, exact = (e.after for _, e in rest.rows)
    assert base64.b64decode(big["doc"]) == b"\xfb" * (17 * 1024 * 1024 + 3) and big["note"] == "b"
    assert null == {"id": 3, "doc": None, "note": "c"}
    # row 4's packet is 2 + 4 + 16 MiB - 9 + 2 bytes: exactly 0xffffff, then an empty one
    assert len(base64.b64decode(exact["doc"])) == 16 * 1024 * 1024 - 9 and exact["note"] == "d"
    assert len({e.id for _, e in rest.rows}) == 3


def test_chunks_are_read_whole_over_tls():
    """The reader parses the socket's bytes itself: over TLS (the server offers it, the
    snapshot connection takes it) the blocks come from the TLS layer, and a chunk of
    several of them is read whole, every value as the server has it."""
    import ssl

    from test_mysql_tls import _tls_server

    from mysql_helpers import make_source
    with _tls_server() as server:
        server.create_database("shop")
        execute(server, "shop", "CREATE TABLE t (id int PRIMARY KEY, note varchar(300))",
                "INSERT INTO t SELECT seq, REPEAT(CHAR(65 + seq % 26), seq % 300) FROM seq_1_to_5000")
        reader = make_source(server, "shop", ["shop.t"], server_id=4703).snapshot_reader()
        try:
            chunk = reader.read_chunk("shop.t", None, 4000, None)
            assert isinstance(reader.conn._sock, ssl.SSLSocket)
            rest = reader.read_chunk("shop.t", chunk.last_key, 4000, None)
        finally:
            reader.close()
        with server.connect("shop") as conn, conn.cursor() as cur:
            cur.execute("SELECT id, note FROM t ORDER BY id")
            expected = [{"id": i, "note": note} for i, note in cur.fetchall()]
    assert not chunk.done and rest.done
    assert [e.after for _, e in chunk.rows + rest.rows] == expected


def test_an_error_in_the_middle_of_a_chunk_is_reported_and_the_next_chunk_is_read_whole(
        mariadb_server, mariadb_database):
    """The server fails a chunk's SELECT after sending part of its rows (here a ``--where``
    that fails at row 2,500): the reader reports the server's error as an error of the
    request (not a lost connection: reading again would fail again; see
    tests/test_mysql_vanish_snapshot.py), and the next chunk is read whole on a new
    connection (the old one's result was cut off)."""
    from cdc.snapshot import SnapshotInputError

    from mysql_helpers import make_source
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE t (id int PRIMARY KEY, note varchar(100))",
            "INSERT INTO t SELECT seq, REPEAT('n', 90) FROM seq_1_to_5000")
    reader = make_source(mariadb_server, db, [f"{db}.t"]).snapshot_reader()
    try:
        with pytest.raises(SnapshotInputError, match="Subquery returns more than 1 row"):
            reader.read_chunk(f"{db}.t", None, 4000, "id < 2500 OR (SELECT id UNION SELECT id + 1) > 0")
        chunk = reader.read_chunk(f"{db}.t", None, 4000, None)
    finally:
        reader.close()
    assert [k for k, _ in chunk.rows] == [(i,) for i in range(1, 4001)]
