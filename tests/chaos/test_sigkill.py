"""SIGKILLs of ``cdc run`` at random moments and at every named crash point, restarts of
the source database, of the Kafka broker (kill -9) and of the mirror's target, and a
sink cut off for 30 s, while a writer commits random transactions.  One ``cdc run``
feeds three sinks: a file, Kafka (a 3-partition topic) and a PostgreSQL mirror.  Then
every committed change must be in the file (once, in commit order, duplicates identical
and bounded) and in the topic (the same checks, order per key: a key's changes share a
partition), and the mirror and the states rebuilt from the file and from the topic must
equal the source table.

PostgreSQL source: file checkpoint store; MariaDB source: the ``postgres`` store.  Both
with ``snapshot: never``: the table starts empty, and a first process killed before its
first checkpoint would have the next one copy what the writer committed meanwhile (op r
events; copies under kills are tests/test_snapshot_*).  The broker is the session's
``kafka_server`` (tests/conftest.py), started again here."""

from __future__ import annotations

import time

import psycopg

from harness import (
    POINTS,
    TABLE_DDL,
    KafkaTopic,
    MariaDb,
    PgDb,
    Pipeline,
    Writer,
    chaos_rounds,
    check_file,
    check_kafka,
    deadline_wait,
    duplicate_bound,
    source_rows,
    target_rows,
    unique_name,
    wait_caught_up,
)

MAX_TX = 40
LONG_CHANGES = 500_000  # per source test: --long runs 1,000,000 changes and at least 500 kills
LONG_BROKER_KILLS_EVERY = 100  # --long: rounds between two kills of the Kafka broker


def _size(chaos, default: int, long: int) -> int:
    return long if chaos.long else default


def _target(target_pg) -> str:
    dsn = target_pg.create_database(unique_name("mirror"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TABLE_DDL.replace("varchar(80)", "text"))
    return dsn


def _mirror_position(dsn: str) -> str | None:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT max(event_id) FROM cdc_mirror_position").fetchone()
    except psycopg.Error:
        return None
    return row[0] if row else None


def _grows(pipe: Pipeline, what: str, timeout: float = 60) -> None:
    """The running process (never restarted here) delivers something new: it resumed alone."""
    size = pipe.out.stat().st_size
    proc = pipe.proc
    deadline_wait(f"{what}: cdc resumes by itself", lambda: pipe.out.stat().st_size > size, timeout, 0.2, pipe.log)
    assert pipe.proc is proc and proc.poll() is None, f"{what}: cdc exited\n{pipe.log()}"


def _kill_broker(pipe: Pipeline, kafka_server, rng) -> None:
    """kill -9 of the Kafka broker, down for a few seconds, then started again: the running
    cdc delivers to it again by itself."""
    time.sleep(rng.uniform(0.5, 2))
    proc = pipe.proc
    pipe.fault("kafka_broker")
    kafka_server.kill()
    time.sleep(rng.uniform(1, 6))
    kafka_server.start()
    assert pipe.kafka is not None
    ends = sum(pipe.kafka.ends())
    deadline_wait("broker restarted: cdc resumes by itself", lambda: sum(pipe.kafka.ends()) > ends, 90, 0.5,
                  pipe.log)
    assert pipe.proc is proc and proc.poll() is None, f"broker restarted: cdc exited\n{pipe.log()}"


def _long_rounds(chaos, pipe: Pipeline, writer: Writer, kafka_server, rng) -> None:
    """``--long``: crashes until the source test's share of the changes is committed, and
    a broker kill every ``LONG_BROKER_KILLS_EVERY`` of them."""
    rounds = 0
    while len(writer.committed) < _size(chaos, 0, LONG_CHANGES):
        chaos_rounds(pipe, rng, 5, POINTS)
        rounds += 5
        if rounds % LONG_BROKER_KILLS_EVERY == 0:
            _kill_broker(pipe, kafka_server, rng)


def _finish(pipe: Pipeline, db, writer: Writer, started: float, name: str) -> None:
    writer.stop()
    wait_caught_up(pipe, db, writer.committed)
    assert pipe.stop() == 0, pipe.log()
    bound = duplicate_bound(pipe.max_in_flight, pipe.max_poll, MAX_TX)
    report, rebuilt = check_file(pipe, writer.committed, bound)
    expected = source_rows(db)
    assert rebuilt == expected, "the state rebuilt from the file equals the source table"
    assert pipe.kafka is not None
    topic, from_topic = check_kafka(pipe.kafka, writer.committed, report.first, bound)
    assert from_topic == expected, "the state rebuilt from the topic equals the source table"
    assert target_rows(pipe.target_dsn) == expected, "the mirror equals the source table"
    reached = pipe.points_reached()
    total = sum(pipe.kills.values())
    print(f"{name}: {total} SIGKILLs ({dict(pipe.kills)}), crash points reached {dict(reached)}, "
          f"{len(writer.committed)} changes in {writer.transactions} transactions, {report.events} events "
          f"delivered, duplicates per crash max {max(report.duplicates_per_crash)} (bound {bound}), "
          f"total {sum(report.duplicates_per_crash)}, torn lines {report.torn}; kafka: {topic.messages} messages, "
          f"duplicates per crash or fault max {max(n for _, n in topic.duplicates_per_fault)} (bound {bound}), "
          f"after a broker kill max {max(n for how, n in topic.duplicates_per_fault if how == 'kafka_broker')}, "
          f"total {topic.messages - topic.unique}; {time.monotonic() - started:.0f}s")


def _crash_source_broker_and_target(pipe: Pipeline, db, writer: Writer, kafka_server, target_pg, target: str,
                                    rng) -> None:
    """While cdc streams: the source database crash-restarted (its own ``crash_restart``),
    the Kafka broker killed -9 and started, the mirror's target killed -9 and started."""
    _grows(pipe, "before the source restart")  # streaming: a process still connecting would exit
    time.sleep(rng.uniform(0.5, 2))
    with writer.paused():
        pipe.fault("source_restart")  # reading resumes at the checkpoint: delivered again
        db.crash_restart()
    _grows(pipe, "source restarted")
    _kill_broker(pipe, kafka_server, rng)
    time.sleep(rng.uniform(0.5, 2))
    target_pg.kill()
    target_pg.start()
    last = _mirror_position(target)
    deadline_wait("the mirror resumes", lambda: _mirror_position(target) != last, 60, 0.5, pipe.log)


def test_postgres_source(chaos, source_pg, target_pg, kafka_server, tmp_path):
    rng = chaos.rng("postgres")  # the kills; the writer has its own, so that neither depends on timing
    started = time.monotonic()
    db = PgDb(source_pg, unique_name("chaos"))
    db.execute(TABLE_DDL)
    target = _target(target_pg)
    pipe = Pipeline(tmp_path, {"type": "postgres", "dsn": db.dsn, "tables": ["public.items"], "snapshot": "never"},
                    target, kafka=KafkaTopic(kafka_server))
    writer = Writer(db, chaos.rng(db.kind + ':writer'), MAX_TX, pause=_size(chaos, 0.01, 0.0))
    rounds = _size(chaos, 60, 250)
    try:
        pipe.start()
        deadline_wait("the slot", lambda: db.execute("SELECT 1 FROM pg_replication_slots WHERE active"), 60,
                      on_fail=pipe.log)
        writer.start()
        chaos_rounds(pipe, rng, rounds // 2 - 3, POINTS)

        # the source database crashed and restarted, the broker killed, the mirror's target
        # (for MariaDB also the checkpoints' home) killed -9: cdc resumes by itself each time
        _crash_source_broker_and_target(pipe, db, writer, kafka_server, target_pg, target, rng)

        # the mirror cut off for 30 s: crashes during its retry backoff, then it resumes alone
        target_pg.stop()
        cut = time.monotonic()
        pipe.kill()
        for n in (1, 2, 3):
            pipe.start(f"sink_backoff:{n}")
            assert pipe.wait_crash_point("sink_backoff", 30), pipe.log()
        pipe.start()
        time.sleep(max(0.0, 30 - (time.monotonic() - cut)))
        target_pg.start()
        last = _mirror_position(target)
        deadline_wait("the mirror resumes after 30 s", lambda: _mirror_position(target) != last, 90, 0.5, pipe.log)
        assert pipe.proc.poll() is None

        chaos_rounds(pipe, rng, rounds - rounds // 2, POINTS)
        _long_rounds(chaos, pipe, writer, kafka_server, rng)  # --long: 1,000,000 changes in all
        _finish(pipe, db, writer, started, "postgres")
        assert set(POINTS) | {"sink_backoff"} <= set(pipe.points_reached())
    finally:
        pipe.discard()
        writer._stop.set()
        if not target_pg.running:
            target_pg.start()
        if not kafka_server.running:
            kafka_server.start()
        pipe.kafka.close()


def test_mariadb_source(chaos, source_mariadb, target_pg, kafka_server, tmp_path):
    rng = chaos.rng("mariadb")  # the kills; the writer has its own, so that neither depends on timing
    started = time.monotonic()
    db = MariaDb(source_mariadb, unique_name("chaos"))
    db.execute(TABLE_DDL + " DEFAULT CHARSET=utf8mb4", "CREATE TABLE ping (id int PRIMARY KEY)")
    target = _target(target_pg)
    pipe = Pipeline(tmp_path, {"type": "mysql", "dsn": source_mariadb.dsn(db.name, user="cdc"), "server_id": 4501,
                               "tables": [f"{db.name}.items"], "snapshot": "never"}, target,
                    checkpoint={"type": "postgres", "dsn": target, "table": "cdc_checkpoints"},
                    kafka=KafkaTopic(kafka_server))
    writer = Writer(db, chaos.rng(db.kind + ':writer'), MAX_TX, pause=_size(chaos, 0.01, 0.0))
    rounds = _size(chaos, 56, 250)
    try:
        pipe.start()
        ping = [0]

        def saved() -> bool:  # the first run saves a position once a commit is acknowledged
            ping[0] += 1
            db.execute(f"INSERT INTO ping VALUES ({ping[0]})")
            try:
                with psycopg.connect(target, connect_timeout=5) as conn:
                    return bool(conn.execute("SELECT 1 FROM cdc_checkpoints").fetchall())
            except psycopg.errors.UndefinedTable:
                return False
        deadline_wait("the first checkpoint", saved, 60, 0.3, pipe.log)
        writer.start()
        chaos_rounds(pipe, rng, rounds // 2, POINTS)

        # the source database crashed and restarted, the broker killed, the mirror's target
        # (for MariaDB also the checkpoints' home) killed -9: cdc resumes by itself each time
        _crash_source_broker_and_target(pipe, db, writer, kafka_server, target_pg, target, rng)
        assert pipe.proc.poll() is None, pipe.log()

        chaos_rounds(pipe, rng, rounds - rounds // 2, POINTS)
        _long_rounds(chaos, pipe, writer, kafka_server, rng)
        _finish(pipe, db, writer, started, "mariadb")
        assert set(POINTS) <= set(pipe.points_reached())
    finally:
        pipe.discard()
        writer._stop.set()
        if not target_pg.running:
            target_pg.start()
        if not kafka_server.running:
            kafka_server.start()
        pipe.kafka.close()
