"""The PostgreSQL mirror's asynchronous form: a batch that is one run of upserts goes as one
statement that runs while the next batch is prepared.  Against a real PostgreSQL target,
through a ``SinkWorker`` as ``cdc run`` runs it: the target's connection killed while
statements are in flight loses nothing and never applies an older change over a newer one."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from cdc.config import Context, parse_config
from cdc.engine import AckTracker, SinkWorker
from cdc.errors import TransientSinkError
from cdc.event import ChangeEvent
from cdc.sinks.mirror import PostgresMirrorSink

SRC = {"name": "shop", "schema": "public", "table": "items"}
BATCHES, ROWS = 40, 500


def _batches() -> list[list[ChangeEvent]]:
    """Batch ``b`` sets ``v = b`` on ``ROWS`` keys: the first half of the batches each on keys
    of their own, the second half on the same keys again, in the same order."""
    out = []
    for b in range(BATCHES):
        first = (b % (BATCHES // 2)) * ROWS
        keys = range(first, first + ROWS)
        out.append([ChangeEvent(f"0/{b + 1:X}:{i}", "u", None, {"id": k, "v": b, "note": f"batch {b}"},
                                {"id": k}, SRC, 1, "public.items") for i, k in enumerate(keys)])
    return out


def _worker(tmp_path, table: str, **sink) -> tuple[SinkWorker, AckTracker, list[BaseException]]:
    """A postgres mirror sink (options ``sink``) run by a SinkWorker, as ``cdc run`` runs it:
    the worker (not started), its tracker, and the fatal errors it reports."""
    raw = {"sources": {"s": {"type": "postgres", "dsn": "postgresql://unused/x", "tables": [table],
                             "checkpoint": {"type": "memory"}}},
           "pipelines": {"p": {"source": "s", "sinks": [{"type": "postgres", **sink}]}}}
    spec = parse_config(raw, tmp_path / "c.yaml", {}).pipelines["p"].sinks[0]
    tracker, fatal = AckTracker(), []
    worker = SinkWorker(spec, spec.build(), tracker, lambda name, exc: fatal.append(exc))
    return worker, tracker, fatal


def _kill_in_flight(dsn: str, stop: threading.Event, killed: list[int]) -> None:
    """Terminate the sink's session while it runs a batch's statement, three times."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.is_set() and len(killed) < 3:
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname ="
                                " current_database() AND pid <> pg_backend_pid() AND state = 'active'"
                                " AND query LIKE 'WITH %json_populate_recordset%'").fetchall()
            if any(r[0] for r in rows):
                killed.append(1)
                time.sleep(0.05)


@pytest.mark.parametrize("batch_size", [None, 300])
def test_connection_killed_with_statements_in_flight_loses_nothing_and_keeps_order(pg_database, tmp_path, batch_size):
    """``batch_size: 300``: each batch of 500 goes as two statements.  A failure found when the
    first of them was sent (the statement before it had failed) lost the batch's
    acknowledgement, and the source waited for it for ever (found by the chaos test)."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text)")
        # every change applied, in the order applied (a statement rolled back leaves none)
        conn.execute("CREATE TABLE applied (n bigserial PRIMARY KEY, id int, v int)")
        conn.execute("CREATE FUNCTION log_applied() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$ BEGIN INSERT INTO applied (id, v) VALUES (NEW.id, NEW.v); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER log_applied AFTER INSERT OR UPDATE ON items FOR EACH ROW"
                     " EXECUTE FUNCTION log_applied()")
    sizes = {"batch_size": batch_size} if batch_size else {}
    worker, tracker, fatal = _worker(tmp_path, "public.items", dsn=pg_database, retry={"initial_backoff": 0.05}, **sizes)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_in_flight, args=(pg_database, stop, killed), daemon=True)
    batches = _batches()
    worker.start()
    killer.start()
    try:
        for batch in batches:
            worker.submit(tracker.add(1, None, len(batch), 0), batch)
        deadline = time.monotonic() + 60
        while tracker.acked_events < BATCHES * ROWS and not fatal:
            assert time.monotonic() < deadline, f"{tracker.acked_events} events acknowledged"
            time.sleep(0.01)
    finally:
        stop.set()
        killer.join(10)
        worker.stop(10)
    assert not fatal, fatal
    assert killed, "no statement was caught in flight"
    assert worker.counts["failed"] >= len(killed)
    expected: dict[int, list[int]] = {}
    for b, batch in enumerate(batches):
        for e in batch:
            expected.setdefault(e.after["id"], []).append(b)
    got: dict[int, list[int]] = {}
    with psycopg.connect(pg_database) as conn:
        for key, v in conn.execute("SELECT id, v FROM applied ORDER BY n"):
            got.setdefault(key, []).append(v)
        position = conn.execute("SELECT event_id FROM cdc_mirror_position").fetchall()
    # each key's two changes applied once each, in order: none lost, none again, none older over newer
    assert got == expected
    assert position == [(batches[-1][-1].id,)]


def test_a_statement_that_fails_in_flight_is_delivered_again_and_only_its_bad_row_is_skipped(pg_database, tmp_path):
    """A batch's statement fails on the server (a row breaks a CHECK) while later batches are
    prepared and sent: nothing after it is applied before it, and with ``on_error: skip`` only
    the bad row is left out."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL CHECK (v >= 0), note text)")
    worker, tracker, fatal = _worker(tmp_path, "public.items", dsn=pg_database, on_error="skip", batch_size=ROWS)
    batches = _batches()[:BATCHES // 2]
    bad = batches[5][100]
    bad.after = {**bad.after, "v": -1}
    worker.start()
    try:
        for batch in batches:
            worker.submit(tracker.add(1, None, len(batch), 0), batch)
        deadline = time.monotonic() + 60
        while tracker.acked_events < len(batches) * ROWS and not fatal:
            assert time.monotonic() < deadline, f"{tracker.acked_events} events acknowledged"
            time.sleep(0.01)
    finally:
        worker.stop(10)
    assert not fatal, fatal
    assert worker.counts["skipped"] == 1
    with psycopg.connect(pg_database) as conn:
        got = dict(conn.execute("SELECT id, v FROM items").fetchall())
    assert got == {e.after["id"]: e.after["v"] for batch in batches for e in batch if e is not bad}


def test_a_statement_in_flight_when_the_sink_closes_is_not_reported_applied(pg_database):
    """Closing the connection abandons the statement in flight: its outcome is unknown, so
    waiting for it fails (the batch is delivered again) rather than saying it was applied."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text)")
    sink = PostgresMirrorSink(pg_database, context=Context(None, name="mirror"))
    sink.open()
    handle = sink.send(_batches()[0])
    assert handle is not None, "a run of upserts into one table goes as one statement in flight"
    sink.close()
    with pytest.raises(TransientSinkError, match="in flight"):
        sink.wait(handle, 5.0)
    sink = PostgresMirrorSink(pg_database, context=Context(None, name="mirror"))
    assert sink.wait(sink.send(_batches()[0]), 10.0)
    sink.close()
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (ROWS,)


SMALL = {"name": "shop", "schema": "public", "table": "t"}


def _ev(lsn: int, i: int, after: dict, op: str = "c") -> ChangeEvent:
    return ChangeEvent(f"0/{lsn:X}:{i}", op, None, after, {"id": after["id"]}, SMALL, 1, "public.t")


def _sent_and_waited(sink: PostgresMirrorSink, events: list[ChangeEvent]) -> None:
    """As the worker does: send, wait; after a failure, deliver again with write."""
    try:
        handle = sink.send(events)
        while not sink.wait(handle, 1.0):
            pass
    except TransientSinkError:
        sink.write(events)


def test_text_keeps_its_characters_with_a_latin1_client_encoding(pg_database):
    """Found by review: the one statement went as UTF-8 bytes whatever the session's
    client_encoding, so with latin1 'café' was stored as 'cafÃ©', without an error."""
    dsn = pg_database + "?client_encoding=latin1"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
    sink = PostgresMirrorSink(dsn, context=Context(None, name="m"))
    sink.write([_ev(1, 0, {"id": 0, "name": "café"})])
    _sent_and_waited(sink, [_ev(2, i, {"id": i, "name": "café"}) for i in range(10, 20)])
    sink.write([_ev(3, i, {"id": i, "name": "café"}) for i in range(20, 30)])
    sink.close()
    with psycopg.connect(pg_database) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM t ORDER BY id")]
    assert names == ["café"] * 21


def test_a_statement_left_running_by_a_stopped_sink_never_moves_the_next_one_backwards(pg_database):
    """Found by review: a statement still running when its sink's process ends (kill -9, the
    grace period over) commits on its own.  The next process, which read the position before
    that, applied older changes over its newer ones and moved the position back.  The stored
    position is now compared and set: a batch whose position moved under it applies nothing
    and is delivered again from the position stored."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL)")
        conn.execute("CREATE TABLE applied (n bigserial PRIMARY KEY, id int, v int)")
        conn.execute("CREATE FUNCTION log_applied() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$ BEGIN INSERT INTO applied (id, v) VALUES (NEW.id, NEW.v); RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER log_applied AFTER INSERT OR UPDATE ON t FOR EACH ROW"
                     " EXECUTE FUNCTION log_applied()")
        conn.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS"  # a long statement
                     " $$ BEGIN IF NEW.id = 9 AND NEW.v = 2 THEN PERFORM pg_sleep(2); END IF; RETURN NEW; END $$")
        conn.execute("CREATE TRIGGER slow BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION slow()")
    first_changes = [_ev(0x10, i, {"id": i, "v": 1}) for i in range(10)]
    second_changes = [_ev(0x20, i, {"id": i, "v": 2}, "u") for i in range(10)]
    first = PostgresMirrorSink(pg_database, context=Context(None, name="m"))
    assert first.send(first_changes + second_changes) is not None
    time.sleep(0.5)
    first.close()  # its statement goes on in the server
    second = PostgresMirrorSink(pg_database, context=Context(None, name="m"))
    _sent_and_waited(second, first_changes)
    _sent_and_waited(second, second_changes)
    second.close()
    with psycopg.connect(pg_database) as conn:
        logs = {}
        for key, v in conn.execute("SELECT id, v FROM applied ORDER BY n"):
            logs.setdefault(key, []).append(v)
        position = conn.execute("SELECT event_id FROM cdc_mirror_position").fetchall()
    assert all(log in ([2], [1, 2]) for log in logs.values()), logs
    assert position == [("0/20:9",)]


def test_a_run_too_large_for_one_message_goes_by_copy(pg_database, monkeypatch):
    """Found by review: a run whose JSON was over 1 GB (100 rows of 12 MB) was refused by the
    server ('invalid message length'), retried for ever, and its copies filled the memory.
    A run over JSON_ROWS_LIMIT (64 MiB; here lowered to 10 kB) goes by COPY instead."""
    from cdc.sinks import mirror
    monkeypatch.setattr(mirror, "JSON_ROWS_LIMIT", 10_000)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
    wide = [_ev(1, i, {"id": i, "name": "x" * 2000}) for i in range(10)]
    narrow = [_ev(2, i, {"id": 100 + i, "name": "y"}) for i in range(10)]
    sink = PostgresMirrorSink(pg_database, context=Context(None, name="m"))
    assert sink.send(wide) is None, "applied at once, by COPY"
    assert sink._temps
    assert sink.wait(sink.send(narrow), 10.0)  # small enough: one statement in flight
    sink.close()
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*), sum(length(name)) FROM t").fetchone() == (20, 20_010)


def test_two_keys_swapping_a_unique_value_in_one_batch_are_applied(pg_database, tmp_path):
    """Found by review: a run keeps the last change of each key, in one statement; when two
    keys swap the value of another unique column (through a third value, as the source had
    to), that statement breaks the constraint, and every retry failed the same way.  The
    run's changes now go in turn, as the source made them."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL UNIQUE)")
    worker, tracker, fatal = _worker(tmp_path, "public.t", dsn=pg_database, on_error="stop")
    first = [_ev(1, i, {"id": i, "v": i}) for i in range(10)]
    swap = [_ev(2, 0, {"id": 0, "v": 100}, "u"), _ev(2, 1, {"id": 1, "v": 0}, "u"),
            _ev(2, 2, {"id": 0, "v": 1}, "u")] + [_ev(2, 3 + i, {"id": i, "v": i}, "u") for i in range(2, 10)]
    worker.start()
    try:
        for batch in (first, swap):  # one after the other: two batches
            worker.submit(tracker.add(1, None, len(batch), 0), batch)
            deadline, acked = time.monotonic() + 30, tracker.acked_events + len(batch)
            while tracker.acked_events < acked and not fatal:
                assert time.monotonic() < deadline, f"{tracker.acked_events} events acknowledged"
                time.sleep(0.01)
    finally:
        worker.stop(10)
    assert not fatal, fatal
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(0, 1), (1, 0)] + \
            [(i, i) for i in range(2, 10)]


def test_names_with_a_percent_sign(pg_database):
    """Found by review: a column (or table) whose name holds '%' (``discount_%``) failed every
    statement built for psycopg ("only '%s', '%b', '%t' are allowed as placeholders"): single
    rows, deletes, truncates, and runs applied in a transaction."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute('CREATE TABLE "t%" (id int PRIMARY KEY, "discount_%" int, doc jsonb NOT NULL)')
    src = {"name": "shop", "schema": "public", "table": "t%"}

    def ev(lsn: int, i: int, op: str, row: dict) -> ChangeEvent:
        return ChangeEvent(f"0/{lsn:X}:{i}", op, None if op != "d" else row, row if op != "d" else None,
                           {"id": row["id"]}, src, 1, "public.t%")

    sink = PostgresMirrorSink(pg_database, position_table="pos%", context=Context(None, name="m%"))
    sink.write([ev(1, 0, "c", {"id": 0, "discount_%": 5, "doc": {}})])  # one row
    sink.write([ev(2, i, "c", {"id": i, "discount_%": i, "doc": None}) for i in range(1, 11)])  # by COPY
    _sent_and_waited(sink, [ev(3, i, "u", {"id": i, "discount_%": 2 * i, "doc": {"a": i}}) for i in range(1, 11)])
    sink.write([ev(4, 0, "d", {"id": 1}), ev(4, 1, "c", {"id": 20, "discount_%": 1, "doc": []})])
    with psycopg.connect(pg_database) as conn:
        rows = conn.execute('SELECT id, "discount_%" FROM "t%" ORDER BY id').fetchall()
    assert rows == [(0, 5)] + [(i, 2 * i) for i in range(2, 11)] + [(20, 1)]
    sink.write([ChangeEvent("0/5:0", "t", None, None, None, src, 1, "public.t%")])
    sink.close()
    with psycopg.connect(pg_database) as conn:
        assert conn.execute('SELECT count(*) FROM "t%"').fetchone() == (0,)
        assert conn.execute('SELECT event_id FROM "pos%"').fetchall() == [("0/5:0",)]


def test_a_sql_ascii_target_keeps_exactly_once_and_its_text(pg_server):
    """Found by review: on a SQL_ASCII database psycopg returned the stored positions as
    bytes, so none matched its source table: a batch sent again was applied again, and the
    compare-and-set refused every batch after the first for ever; the one statement could
    not send 'café' at all.  The mirror's session now uses UTF8 whatever the database."""
    name = f"ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' TEMPLATE template0")
    dsn = pg_server.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text, ok boolean)")
    sink = PostgresMirrorSink(dsn, context=Context(None, name="m"))
    sink.write([_ev(1, 0, {"id": 0, "name": "café", "ok": 1})])
    sink.write([_ev(2, 0, {"id": 1, "name": "zoë", "ok": 0})])
    sink.write([_ev(1, 0, {"id": 0, "name": "again", "ok": 1})])  # sent again: skipped
    assert sink.skipped == ["0/1:0"]
    _sent_and_waited(sink, [_ev(3, i, {"id": i, "name": "café", "ok": 1}) for i in range(10, 20)])
    sink.close()
    with psycopg.connect(dsn) as conn:
        conn.execute("SET client_encoding TO 'UTF8'")
        rows = conn.execute("SELECT id, name, ok FROM t ORDER BY id").fetchall()
    assert rows == [(0, "café", True), (1, "zoë", False)] + [(i, "café", True) for i in range(10, 20)]


def test_mirror_sinks_opened_at_once_on_a_new_target(pg_database):
    """Found by review: two mirror sinks of one `cdc run` opening at once on a target without
    the position table: CREATE TABLE IF NOT EXISTS raced, one failed with a UniqueViolation
    (permanent, not retried) and `cdc run` stopped."""
    for attempt in range(20):
        table = f"pos_{attempt}"
        errors: list[BaseException] = []
        sinks = [PostgresMirrorSink(pg_database, position_table=table, context=Context(None, name=f"m{i}"))
                 for i in range(3)]

        def open_one(sink: PostgresMirrorSink, errors: list[BaseException]) -> None:
            try:
                sink.open()
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                errors.append(exc)

        threads = [threading.Thread(target=open_one, args=(s, errors)) for s in sinks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for s in sinks:
            s.close()
        assert not errors, errors


def test_write_after_send_on_one_sink(pg_database):
    """Found by review: a write between two sends left the sink's own idea of the stored
    position behind, and the next send was refused as 'moved'."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text)")
    sink = PostgresMirrorSink(pg_database, context=Context(None, name="m"))
    assert sink.wait(sink.send([_ev(1, i, {"id": i, "name": "a"}) for i in range(10)]), 10)
    sink.write([_ev(2, 0, {"id": 0, "name": "b"})])
    assert sink.wait(sink.send([_ev(3, i, {"id": i, "name": "c"}) for i in range(10)]), 10)
    sink.close()
