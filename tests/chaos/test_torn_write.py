"""A SIGKILL in the middle of the file sink's write can leave a torn last line (Linux
stops a large write at a page boundary when the process gets a fatal signal; the SIGKILL
runs of test_sigkill.py report such "torn lines").  The next run must not glue its first
event to that fragment: a consumer reading lines would lose the event.  The file state a
torn write leaves is made here directly, as a kill cannot be timed to the byte."""

from __future__ import annotations

import json

from harness import PgDb, Pipeline, deadline_wait, unique_name


def _lines(pipe: Pipeline) -> list[bytes]:
    return [line for line in pipe.out.read_bytes().split(b"\n") if line] if pipe.out.exists() else []


def _parsed(pipe: Pipeline) -> list[dict]:
    out = []
    for line in _lines(pipe):
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_the_event_after_a_torn_line_is_readable(pg_server, tmp_path):
    db = PgDb(pg_server, unique_name("torn"))
    db.execute("CREATE TABLE items (id bigint PRIMARY KEY, v text)")
    pipe = Pipeline(tmp_path, {"type": "postgres", "dsn": db.dsn, "tables": ["public.items"]}, None)
    try:
        pipe.start()
        # Row 1 is written after the initial snapshot: written before its copy, it would arrive
        # twice (streamed and copied: at-least-once at the snapshot's edge, docs/snapshots.md).
        deadline_wait("the snapshot", lambda: "snapshot initial of public.items done" in pipe.log(), 60,
                      on_fail=pipe.log)
        db.execute("INSERT INTO items VALUES (1, 'whole')")
        deadline_wait("delivery", lambda: len(_parsed(pipe)) == 1, 30, on_fail=pipe.log)
        assert pipe.stop() == 0  # the checkpoint is after row 1: row 2 is the next event written
        db.execute("INSERT INTO items VALUES (2, 'after the torn line')")
        with open(pipe.out, "ab") as f:  # the first attempt at row 2, cut by a SIGKILL
            f.write(b'{"id":"0/0:9","op":"c","before":null,"after":{"id":')
        pipe.start()
        deadline_wait("delivery", lambda: b"after the torn line" in pipe.out.read_bytes(), 30, on_fail=pipe.log)
        assert pipe.stop() == 0
    finally:
        pipe.ensure_dead()
        db.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active"
                   " AND database = current_database()")
    assert [e["after"]["id"] for e in _parsed(pipe)] == [1, 2], _lines(pipe)
