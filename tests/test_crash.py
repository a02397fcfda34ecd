"""The crash test: `cdc run` killed with SIGKILL at random moments while a writer
commits, then restarted.  Every committed change must reach the sink; a change
delivered twice carries the same id both times."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg
import yaml

from pgutil import read_jsonl, sql

CHANGES = 20_000
KILLS = 5


def test_sigkill_loses_nothing(pg_database, tmp_path):
    sql(pg_database, "CREATE TABLE items (id bigint PRIMARY KEY, n int NOT NULL)")
    cfg = {"sources": {"db": {"type": "postgres", "dsn": pg_database, "tables": ["public.items"],
                              "checkpoint": {"type": "file", "path": "state/db.json"},
                              "checkpoint_interval": 0.2, "snapshot": "never"}},
           "pipelines": {"all": {"source": "db", "sinks": [{"type": "file", "path": "out/items.jsonl"}]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "cdc.log", "ab")

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "cdc", "run", str(path)], stdout=log, stderr=log)

    def wait_streaming(proc: subprocess.Popen) -> None:
        deadline = time.time() + 30
        while not sql(pg_database, "SELECT 1 FROM pg_replication_slots WHERE active"):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "cdc.log").read_text()
            time.sleep(0.1)

    # the first run creates the slot; changes committed from then on must all arrive
    proc = start()
    wait_streaming(proc)

    committed = []  # (id, n) of every committed change, in commit order

    def writer():
        rnd = random.Random(7)
        with psycopg.connect(pg_database, autocommit=True) as conn:
            next_id = 0
            while len(committed) < CHANGES:
                with conn.transaction():
                    batch = []
                    for _ in range(rnd.randint(1, 20)):
                        if next_id and rnd.random() < 0.3:
                            target = rnd.randrange(next_id)
                            conn.execute("UPDATE items SET n = n + 1 WHERE id = %s", (target,))
                            batch.append(("u", target))
                        else:
                            conn.execute("INSERT INTO items VALUES (%s, 0)", (next_id,))
                            batch.append(("c", next_id))
                            next_id += 1
                committed.extend(batch)
                time.sleep(0.004)

    thread = threading.Thread(target=writer)
    thread.start()
    kills = 0
    try:
        while kills < KILLS:
            time.sleep(random.uniform(0.3, 2.0))
            assert thread.is_alive(), "the writer finished before every kill: slow it down"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            proc = start()
        thread.join()
        wait_streaming(proc)
        # let the last run catch up, then stop it gracefully
        deadline = time.time() + 120
        while len(read_jsonl(tmp_path / "out/items.jsonl")) < len(committed) and time.time() < deadline:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        thread.join()

    events = read_jsonl(tmp_path / "out/items.jsonl")
    first_copy = {}
    for e in events:
        identity = (e["op"], e["after"]["id"], e["after"]["n"])
        if e["id"] in first_copy:
            assert first_copy[e["id"]] == identity, f"id {e['id']} reused for another change"
        first_copy[e["id"]] = identity
    unique = sorted(first_copy.items(), key=lambda kv: (int(kv[0].split(":")[0].split("/")[0], 16),
                                                         int(kv[0].split(":")[0].split("/")[1], 16),
                                                         int(kv[0].split(":")[1])))
    delivered = [(op, row_id) for _, (op, row_id, _) in unique]
    assert kills == KILLS
    assert len(delivered) == len(committed) >= CHANGES
    assert delivered == committed  # every change, once, in commit order
    duplicates = len(events) - len(unique)
    print(f"{len(committed)} changes, {kills} kills, {duplicates} redelivered duplicates")
