"""Snapshots of PostgreSQL tables (docs/snapshots.md), against a real server."""

from __future__ import annotations

import json
import time

from snapshot_helpers import ChunkHitter, CopyUnderKills, read_complete, rebuild, same_ids_same_content

from pgutil import Running, config, file_pipeline, read_jsonl, sql


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


def test_initial_snapshot_then_stream(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE items (id bigint PRIMARY KEY, name text, price numeric(8,2),"
                     " at timestamptz, tags text[])",
        "INSERT INTO items SELECT g, 'item ' || g || E'\\ttab', g * 1.5, '2026-01-01'::timestamptz + g * interval '1s',"
        " ARRAY['a', 'b c'] FROM generate_series(1, 1000) g")
    cfg = config(tmp_path, pg_database, ["public.items"], {"all": file_pipeline()}, snapshot="initial", snapshot_chunk_size=128)
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as r:
        wait_for(lambda: len(read_complete(out)) >= 1000, 60, "the snapshot rows")
        sql(pg_database, "UPDATE items SET name = 'changed' WHERE id = 5")
        wait_for(lambda: len(read_complete(out)) >= 1001, 30, "the live change")
        wait_for(lambda: r.runner.saved_position and not r.runner.saved_position["snapshot"]["queue"], 30,
                 "the checkpoint")
    events = read_complete(out)
    reads = [e for e in events if e["op"] == "r"]
    assert [e["after"]["id"] for e in reads] == list(range(1, 1001))
    assert reads[0]["after"] == {"id": 1, "name": "item 1\ttab", "price": "1.50", "at": "2026-01-01T00:00:01Z",
                                 "tags": ["a", "b c"]}
    assert [e["source"]["snapshot"] for e in reads].count("last") == 1 and reads[-1]["source"]["snapshot"] == "last"
    assert events[-1]["op"] == "u" and events[-1]["after"]["name"] == "changed"
    saved = json.loads((tmp_path / "state/db.json").read_text())["position"]
    assert saved["snapshot"] == {"tables": ["public.items"], "queue": []}
    # a restart copies nothing again
    with Running(cfg):
        sql(pg_database, "UPDATE items SET name = 'again' WHERE id = 6")
        wait_for(lambda: len(read_complete(out)) >= 1002, 30, "the second live change")
    assert len(read_complete(out)) == 1002



def test_watermark_messages_are_never_op_m_events(pg_database, tmp_path):
    """The copy's watermarks are logical decoding messages, which the source always asks pgoutput
    for: a pipeline without ``messages: true`` gets no op m event, one with it gets the
    application's messages, and neither gets a watermark."""
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t SELECT generate_series(1, 300)")
    for messages in (False, True):
        out = tmp_path / f"out/{messages}.jsonl"
        slot = f"cdc_{pg_database.rsplit('/', 1)[1]}_{messages}".lower()  # a new source each time
        cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline(str(out))},
                     checkpoint={"type": "file", "path": f"state/{messages}.json"}, slot=slot,
                     messages=messages, snapshot="initial", snapshot_chunk_size=32)  # ten chunks: ten watermarks
        with Running(cfg) as r:
            wait_for(lambda: r.runner.snapshots.finished, 60, "the copy")  # noqa: B023
            sql(pg_database, "SELECT pg_logical_emit_message(false, 'app', 'hello')",
                f"INSERT INTO t VALUES ({1000 + messages})")
            wait_for(lambda: any(e["op"] == "c" for e in read_jsonl(out)), 30, "the live insert")  # noqa: B023
        events = read_jsonl(out)
        copied = list(range(1, 301)) + ([1000] if messages else [])  # the first run's live row too
        assert [e["after"]["id"] for e in events if e["op"] == "r"] == copied
        assert [e["message"] for e in events if e["op"] == "m"] == (
            [{"prefix": "app", "content": "hello"}] if messages else [])
        assert [e["op"] for e in events if e["op"] not in ("r", "m")] == ["c"]


ROWS = 200_000


def _pg_executor(dsn):
    import psycopg
    conn = psycopg.connect(dsn, autocommit=True)

    def execute(statements):
        with conn.transaction():
            for s, p in statements:
                conn.execute(s, p)
    return execute


def _table_rows(dsn) -> dict:
    return {r[0]: {"id": r[0], "v": r[1], "note": r[2]} for r in sql(dsn, "SELECT id, v, note FROM snap")}


def _current(runner):
    c = runner.snapshots
    if c is None or not c.queue:
        return None
    window = c.window
    after = window.entry["after"] if window is not None else c.queue[0]["after"]
    return after[0] if after else 0


def test_writer_hits_the_chunk_being_copied(pg_database, tmp_path):
    import random
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    sql(pg_database, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note text)",
        f"INSERT INTO snap SELECT 2 * g, 0, 'row ' || g FROM generate_series(1, {ROWS}) g")
    chunk = 4000
    cfg = config(tmp_path, pg_database, ["public.snap"], {"all": file_pipeline()}, snapshot="initial", snapshot_chunk_size=chunk)
    out = tmp_path / "out/all.jsonl"
    with Running(cfg) as r:
        with ChunkHitter(_pg_executor(pg_database), lambda: 2 * (_current(r.runner) or 0) // 2, chunk * 2,
                         seed) as writer:
            wait_for(lambda: r.runner.snapshots.finished, 300, "the snapshot")
            time.sleep(1.0)  # and some changes after it
        assert writer.error is None, writer.error
        expected = _table_rows(pg_database)
        deadline = time.time() + 60
        while rebuild(read_complete(out), "snap") != expected:
            assert time.time() < deadline, "the file sink did not reach the table's state"
            time.sleep(0.5)
        figures = r.runner.snapshots.figures()
    events = read_complete(out)
    repeats = same_ids_same_content(events)
    reads = sum(e["op"] == "r" for e in events)
    print(f"{writer.done} writer transactions during the copy; {reads} snapshot rows, "
          f"{len(events) - reads} live changes, {repeats} repeats; chunks read again: {figures['chunks_retried']}")
    assert writer.done > 100


def test_sigkill_during_the_copy_resumes_after_the_last_chunk(pg_database, tmp_path, request):
    import random
    import re
    import signal

    import yaml
    seed = request.config.getoption("--chaos-seed")  # the chaos suite's option replays a run
    if seed is None:
        seed = random.randrange(1 << 30)
    print(f"seed {seed} (replay with: bash scripts/test {request.node.nodeid} --chaos-seed {seed})")
    rnd = random.Random(seed)
    sql(pg_database, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note text)",
        f"INSERT INTO snap SELECT 2 * g, 0, repeat('x', 200) FROM generate_series(1, {ROWS}) g")
    chunk = 500  # many chunks: the copy outlasts five kills on an idle machine too
    raw = {"sources": {"db": {"type": "postgres", "dsn": pg_database, "tables": ["public.snap"],
                              "snapshot_chunk_size": chunk,
                              "checkpoint": {"type": "file", "path": "state/db.json"}, "checkpoint_interval": 0.2}},
           "pipelines": {"all": {"source": "db", "sinks": [{"type": "file", "path": "out/all.jsonl"}]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    checkpoint = tmp_path / "state/db.json"
    cdc = CopyUnderKills(path, checkpoint, tmp_path, rnd)
    request.addfinalizer(lambda: [(p.kill(), p.wait()) for p in cdc.procs if p.poll() is None])
    copied, runs = cdc.copied, cdc.runs

    proc = cdc.start()
    kills = 8
    with ChunkHitter(_pg_executor(pg_database), lambda: max(copied() or 0, 0), chunk * 2, seed) as writer:
        try:
            proc = cdc.kill_loop(proc, kills, wait_for)
            wait_for(lambda: copied() == -1, 300, "the end of the copy")
        finally:
            if writer.error is not None:
                proc.kill()
    assert writer.error is None, writer.error
    expected = _table_rows(pg_database)
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
        m = re.search(r"snapshot initial of public.snap (resuming after key \[(\d+)\]|from the start)", text)
        print(f"run {i}: {m.group(1) if m else 'no snapshot left to do'}")
        resumed.append(int(m.group(2)) if m and m.group(2) else None)
    assert resumed[0] is None
    assert sum(k is not None and k > 0 for k in resumed[1:]) >= 7, "restarts did not resume after a chunk"
    events = read_complete(out)
    repeats = same_ids_same_content(events)
    print(f"{kills} kills; {sum(e['op'] == 'r' for e in events)} snapshot rows for {ROWS} rows, "
          f"{repeats} repeated events, {writer.done} writer transactions")


def _run_to_exit(path, tmp_path, name: str, env_extra: dict | None = None, timeout: float = 120) -> tuple[int, str]:
    import os
    import subprocess
    import sys
    env = {**os.environ, **(env_extra or {})}
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(path)], stdout=out, stderr=out, env=env)
        try:
            code = proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, log.read_text()


def test_rows_read_again_after_a_crash_keep_their_ids(pg_database, tmp_path):
    """SIGKILL after a chunk reached the sink but before its progress was checkpointed
    (``after_sink_write``): the restarted copy reads the chunk again, at a later stream
    position.  A row read again unchanged carries the id of its first copy; a row changed
    in between is a newer read (another id, never the old id with other content)."""
    import signal

    import yaml
    sql(pg_database, "CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note text)",
        "INSERT INTO snap SELECT g, 0, 'n' || g FROM generate_series(1, 2000) g")
    raw = {"sources": {"db": {"type": "postgres", "dsn": pg_database, "tables": ["public.snap"],
                              "snapshot": "initial_only", "snapshot_chunk_size": 100, "snapshot_parallelism": 1,
                              "checkpoint": {"type": "file", "path": "state/db.json"}, "checkpoint_interval": 0}},
           "pipelines": {"all": {"source": "db", "sinks": [{"type": "file", "path": "out/all.jsonl"}]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, text = _run_to_exit(path, tmp_path, "crash", {"CDC_CRASH_AT": "after_sink_write:4"})
    assert code == -signal.SIGKILL, text
    out = tmp_path / "out/all.jsonl"
    first = {e["after"]["id"]: e for e in read_complete(out) if e["op"] == "r"}
    saved = json.loads((tmp_path / "state/db.json").read_text())["position"]["snapshot"]["queue"][0]["after"]
    beyond = sorted(k for k in first if saved is None or k > saved[0])
    assert beyond, f"no row delivered after the checkpoint (up to {saved}): the crash came too early or late"
    changed = beyond[len(beyond) // 2]
    sql(pg_database, f"UPDATE snap SET v = 1 WHERE id = {changed}")
    code, text = _run_to_exit(path, tmp_path, "resume")
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
    assert rebuild(events, "snap") == _table_rows(pg_database)
    print(f"{len(first)} rows before the crash, checkpoint after {saved}, {len(again)} read again")


def test_bc_timestamps_read_by_the_snapshot_are_what_the_stream_gives(pg_database, tmp_path):
    """The snapshot's fast path converts timestamps inline: a BC one must still come out
    as the streaming path gives it (ISO 8601, astronomical year)."""
    sql(pg_database, "CREATE TABLE t (id int PRIMARY KEY, ts timestamp, d date)",
        "INSERT INTO t VALUES (1, '0044-03-15 10:00:00.5 BC', '0044-03-15 BC'), (2, '2026-11-25 10:00:00', NULL)")
    cfg = config(tmp_path, pg_database, ["public.t"], {"all": file_pipeline()}, snapshot="initial")
    out = tmp_path / "out/all.jsonl"
    with Running(cfg):
        wait_for(lambda: len(read_complete(out)) >= 2, 60, "the snapshot rows")
        sql(pg_database, "UPDATE t SET id = id + 10")
        wait_for(lambda: len(read_complete(out)) >= 4, 30, "the live changes")
    events = read_complete(out)
    reads = {e["after"]["id"]: e["after"] for e in events if e["op"] == "r"}
    streamed = {e["after"]["id"] - 10: dict(e["after"], id=e["after"]["id"] - 10) for e in events if e["op"] == "u"}
    assert reads == streamed
    assert reads[1] == {"id": 1, "ts": "-0043-03-15T10:00:00.5", "d": "-0043-03-15"}
