"""A restart with a backlog waiting in the slot: the walsender streams right after
START_REPLICATION, so libpq may already hold part of a message when the source takes
over the socket.  Every start must read the whole backlog (it stopped once with
"frame length -939524096 at byte 0": the part libpq held was skipped)."""

from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from cdc.config.layout import Context
from cdc.event import ChangeEvent
from cdc.sources.postgres import PostgresSource

pytestmark = pytest.mark.integration

ROWS = 4_000


def _read_all(source: PostgresSource, count: int) -> int:
    got = 0
    for _ in range(10_000):
        got += sum(1 for item in source.poll(0.5) if isinstance(item, ChangeEvent))
        if got >= count:
            break
    return got


def test_every_restart_reads_the_whole_backlog(pg_database):
    name = f"r_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE wide (id int PRIMARY KEY, pad text)")
    source = PostgresSource(pg_database, ["public.wide"], context=Context(None, source=name, name=name))
    source.open(None)  # creates the slot here; nothing is ever confirmed, so each start reads it all
    source.close()
    with psycopg.connect(pg_database, autocommit=True) as conn:
        (start_lsn,) = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                                    " WHERE slot_name = %s", (source.slot,)).fetchone()
        for t in range(20):  # many transactions, rows of different sizes: message ends fall anywhere
            conn.execute("INSERT INTO wide SELECT g, repeat(md5(g::text), 1 + g %% 997) FROM generate_series(%s::int, %s::int) g",
                         (t * ROWS // 20, (t + 1) * ROWS // 20 - 1))
    try:
        for start in range(40):
            source = PostgresSource(pg_database, ["public.wide"], slot=source.slot,
                                    context=Context(None, source=name, name=name))
            source.open({"lsn": start_lsn})
            try:
                assert _read_all(source, ROWS) == ROWS, f"start {start}"
            finally:
                source.close()
    finally:
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (source.slot,))


def test_start_replication_errors_read_from_the_socket_keep_their_sqlstate(pg_database):
    """The server's answer to START_REPLICATION is read without libpq: its errors still
    say what went wrong, and a slot held by another walsender (55006) stays retryable."""
    from cdc.errors import SourceConnectionError, SourceError
    from cdc.sources.postgres.replication import ReplicationStream

    name = f"e_{uuid.uuid4().hex[:8]}"
    options = {"proto_version": "1", "publication_names": name}
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute(f"CREATE PUBLICATION {name} FOR TABLE t")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
    holder = ReplicationStream(pg_database)
    holder.start(name, 0, options)
    try:
        with pytest.raises(SourceConnectionError) as busy:
            ReplicationStream(pg_database).start(name, 0, options)
        assert busy.value.sqlstate == "55006" and f'"{name}" is active' in str(busy.value), busy.value
        with pytest.raises(SourceError) as missing:
            ReplicationStream(pg_database).start(name + "_gone", 0, options)
        assert not isinstance(missing.value, SourceConnectionError)
        assert missing.value.sqlstate == "42704" and "does not exist" in str(missing.value), missing.value
    finally:
        holder.close()
        with psycopg.connect(pg_database, autocommit=True) as conn:
            deadline = time.monotonic() + 30  # the walsender may not have exited yet
            while conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                               (name,)).fetchone()[0] and time.monotonic() < deadline:
                time.sleep(0.05)
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))


def test_a_walsender_ended_during_start_replication_is_retried():
    """``pg_terminate_backend`` can hit the walsender while it answers START_REPLICATION
    (seen in tests/test_postgres_faults.py's walsender kills): FATAL 57P01 must reconnect,
    not stop cdc; a missing slot (42704) must stop it."""
    from cdc.errors import SourceConnectionError
    from cdc.sources.postgres.replication import ReplicationStream

    for retried in ("57P01", "57P02", "57P03", "55006", "08006", None):
        assert isinstance(ReplicationStream._start_failed("x", retried), SourceConnectionError), retried
    for final in ("42704", "42501", "0A000"):
        assert not isinstance(ReplicationStream._start_failed("x", final), SourceConnectionError), final
