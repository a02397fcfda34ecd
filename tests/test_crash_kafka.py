"""SIGKILL of `cdc run` with the Kafka sink at full speed: a writer commits as fast as it
can (no pacing), so the sink has several batches in flight when the process dies.
No committed change may be missing from the topic; a change delivered twice carries the
same id both times; per key, changes arrive in commit order."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import orjson
import psycopg
import yaml
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

from pgutil import sql

KILLS = 4
ROWS = 30_000          # rows inserted, then updated again and again while the kills happen


def test_sigkill_at_full_speed_into_kafka_loses_nothing(kafka_server, pg_database, tmp_path):
    topic = f"items-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_server.bootstrap})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(60)  # keys spread over partitions
    sql(pg_database, "CREATE TABLE items (id bigint PRIMARY KEY, n int NOT NULL)")
    cfg = {"sources": {"db": {"type": "postgres", "dsn": pg_database, "tables": ["public.items"],
                              "checkpoint": {"type": "file", "path": "state/db.json"},
                              "checkpoint_interval": 0.2,
                              "snapshot": "never"}},  # the log under kills (test_snapshot_* kill copies)
           "pipelines": {"all": {"source": "db", "sinks": [{
               "type": "kafka", "bootstrap_servers": kafka_server.bootstrap, "topic": topic,
               "batch_size": 500, "max_batches_in_flight": 8}]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "cdc.log", "ab")

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "cdc", "run", str(path)], stdout=log, stderr=log,
                                cwd=tmp_path)

    def wait_streaming(proc: subprocess.Popen) -> None:
        deadline = time.time() + 60
        while not sql(pg_database, "SELECT 1 FROM pg_replication_slots WHERE active"):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "cdc.log").read_text()
            time.sleep(0.1)

    proc = start()
    wait_streaming(proc)

    expected: set[tuple[str, int, int]] = set()   # (op, id, n) of every committed change
    stop = threading.Event()
    seed = int(os.environ.get("CDC_TEST_SEED") or random.randrange(2**32))
    print(f"seed: {seed} (replay with CDC_TEST_SEED={seed})")
    rnd = random.Random(seed)

    def writer() -> None:  # no sleep: as fast as PostgreSQL commits
        counts = [0] * ROWS
        with psycopg.connect(pg_database, autocommit=True) as conn:
            for lo in range(0, ROWS, 1000):
                conn.execute("INSERT INTO items SELECT g, 0 FROM generate_series(%s::bigint, %s::bigint) g",
                             (lo, lo + 999))
                expected.update(("c", i, 0) for i in range(lo, lo + 1000))
            w = random.Random(seed + 1)
            deadline = time.monotonic() + 300
            while not stop.is_set() and time.monotonic() < deadline:
                lo = w.randrange(ROWS - 500)
                hi = lo + w.randint(1, 500)
                conn.execute("UPDATE items SET n = n + 1 WHERE id >= %s AND id < %s", (lo, hi))
                for i in range(lo, hi):
                    counts[i] += 1
                    expected.add(("u", i, counts[i]))

    thread = threading.Thread(target=writer)
    thread.start()
    kills = 0
    try:
        while kills < KILLS:
            time.sleep(rnd.uniform(1.0, 3.0))
            assert thread.is_alive(), "the writer stopped before every kill"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start()
            wait_streaming(proc)
        stop.set()
        thread.join(60)
        messages = _consume(kafka_server.bootstrap, topic, {(op, i, n) for op, i, n in expected}, timeout=240)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        thread.join(60)

    first: dict[bytes, tuple] = {}
    per_key: dict[int, list[int]] = {}
    for m in messages:  # in partition order: one key's changes are in one partition
        value = orjson.loads(m.value())
        identity = (value["op"], value["after"]["id"], value["after"]["n"])
        event_id = dict(m.headers())["id"]
        if event_id in first:
            assert first[event_id] == identity, f"id {event_id!r} reused for another change"
            continue
        first[event_id] = identity
        per_key.setdefault(identity[1], []).append(identity[2])
    delivered = set(first.values())
    assert not expected - delivered, f"{len(expected - delivered)} committed changes missing"
    assert delivered == expected
    for key, ns in per_key.items():
        assert ns == sorted(ns), f"key {key}: changes out of commit order"
    duplicates = len(messages) - len(first)
    print(f"{len(expected)} changes, {kills} kills, {duplicates} redelivered duplicates")
    assert duplicates > 0  # a kill came with delivered changes past the checkpoint: a window in flight


def _consume(bootstrap: str, topic: str, expected: set, timeout: float) -> list:
    """Every message of ``topic`` from the start, until each expected change has arrived."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages, missing = [], set(expected)
    deadline = time.monotonic() + timeout
    try:
        while missing and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            messages.append(msg)
            value = orjson.loads(msg.value())
            missing.discard((value["op"], value["after"]["id"], value["after"]["n"]))
        # what was already delivered twice is in the topic too: read to the end
        idle = time.monotonic() + 3
        while time.monotonic() < idle:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                messages.append(msg)
                idle = time.monotonic() + 3
    finally:
        consumer.close()
    return messages
