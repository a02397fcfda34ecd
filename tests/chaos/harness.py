"""The chaos harness: a writer that commits random transactions to the source database
and remembers each committed change, ``cdc run`` processes that are killed and
restarted (at random moments or at a named crash point, ``cdc/faults.py``), and the
checks of what the sinks hold (the file, the Kafka topic read back from its start, and
the mirror).

The bound on duplicates (stated in docs and asserted per crash): a restarted ``cdc run``
redelivers only what its sinks wrote after the last saved checkpoint.  With
``checkpoint_interval: 0`` the runner saves on every turn of its loop, and between two
saves it reads at most one poll batch, so at most

    max_in_flight_events + 3 * max_poll_events + (largest transaction - 1)

events are redelivered per crash: what was in flight at the last save (the reader stops
at ``max_in_flight_events`` but may overshoot by one batch), one batch read after it, one
more when the crash falls between the ack and the save (``after_ack``,
``checkpoint_write``), and the acknowledged part of the transaction that straddles the
checkpoint (checkpoints are taken at commits only).  The same bound holds for the other
faults that make cdc deliver again (a restarted source database: reading resumes at the
checkpoint; a failed Kafka batch: the sink sends again what was in flight), so each of
them also starts a new stretch of the sinks' output, checked against the bound like a
crash (``Pipeline.fault``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import string
import subprocess
import sys
import threading
import time
import uuid
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
POINTS = ["after_sink_write", "after_ack", "checkpoint_write", "mid_transaction"]  # need no sink outage
TABLE_DDL = "CREATE TABLE items (id bigint PRIMARY KEY, n int NOT NULL, v varchar(80) NOT NULL)"


def duplicate_bound(max_in_flight: int, max_poll: int, max_tx: int) -> int:
    return max_in_flight + 3 * max_poll + max_tx - 1


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def deadline_wait(what: str, until, timeout: float, interval: float = 0.2, on_fail=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:.0f}s\n{on_fail()}")
        time.sleep(interval)


# ---- the source databases, behind one small interface -------------------------------------

class PgDb:
    """A database on a PostgreSQL server (``server`` may be restarted)."""

    kind = "postgres"

    def __init__(self, server, name: str) -> None:
        self.server, self.name = server, name
        self.dsn = server.create_database(name)

    def connect(self):
        import psycopg
        return psycopg.connect(self.dsn, connect_timeout=10)

    def execute(self, *statements: str) -> list:
        import psycopg
        rows: list = []
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            for s in statements:
                cur = conn.execute(s)
                if cur.description:
                    rows += cur.fetchall()
        return rows

    def crash_restart(self) -> None:
        """Immediate shutdown (SIGQUIT: no checkpoint, crash recovery at the next start)."""
        os.kill(self.server.pid, signal.SIGQUIT)
        deadline_wait("postgres immediate stop", lambda: not self.server.running, 60)
        self.server.stop()
        self.server.start()


class MariaDb:
    kind = "mysql"

    def __init__(self, server, name: str) -> None:
        self.server, self.name = server, name
        self.dsn = server.create_database(name)

    def connect(self):
        return self.server.connect(self.name)  # autocommit: the writer sends BEGIN and COMMIT

    def execute(self, *statements: str) -> list:
        rows: list = []
        with self.server.connect(self.name) as conn, conn.cursor() as cur:
            for s in statements:
                cur.execute(s)
                rows += list(cur.fetchall() or ())
        return rows

    def crash_restart(self) -> None:
        """kill -9 of mariadbd, then a start (InnoDB crash recovery)."""
        self.server.kill()
        self.server.start()


def _run_tx(db, conn, changes: list[tuple]) -> None:
    if db.kind == "postgres":
        with conn.transaction():
            for sql_text, params in changes:
                conn.execute(sql_text, params)
    else:
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            for sql_text, params in changes:
                cur.execute(sql_text, params)
            cur.execute("COMMIT")


class Writer:
    """Commits random transactions (1..max_tx inserts, updates, deletes of ``items``) until
    stopped; ``committed`` holds (op, id) of every committed change, in commit order.
    ``paused()`` holds it between transactions (for a restart of the database)."""

    def __init__(self, db, rng: random.Random, max_tx: int, pause: float = 0.01) -> None:
        self.db, self.rng, self.max_tx, self.pause = db, rng, max_tx, pause
        self.committed: list[tuple[str, int]] = []
        self.transactions = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="chaos writer", daemon=True)
        self._fresh = False

    def start(self) -> Writer:
        self._thread.start()
        return self

    def paused(self):
        writer = self

        class _Paused:
            def __enter__(self):
                writer._lock.acquire()

            def __exit__(self, *exc):
                writer._fresh = True  # reconnect: the server went away
                writer._lock.release()
        return _Paused()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "the writer did not stop"
        if self._error is not None:
            raise AssertionError(f"the writer failed: {self._error!r}")

    def _run(self) -> None:
        rng, db = self.rng, self.db
        alive: list[int] = []
        next_id = 1
        conn = None
        try:
            while not self._stop.is_set():
                with self._lock:
                    if conn is None or self._fresh:
                        if conn is not None:
                            try:
                                conn.close()
                            except Exception:
                                pass
                        conn, self._fresh = db.connect(), False
                    changes, done, gone = [], [], []
                    for _ in range(rng.randint(1, self.max_tx)):
                        r = rng.random()
                        v = "".join(rng.choices(string.ascii_letters + " é€", k=rng.randint(0, 40)))
                        if alive and r < 0.3:
                            target = rng.choice(alive)
                            changes.append(("UPDATE items SET n = n + 1, v = %s WHERE id = %s", (v, target)))
                            done.append(("u", target))
                        elif len(alive) > 50 and r < 0.4:
                            target = alive.pop(rng.randrange(len(alive)))
                            changes.append(("DELETE FROM items WHERE id = %s", (target,)))
                            done.append(("d", target))
                            gone.append(target)
                        else:
                            changes.append(("INSERT INTO items VALUES (%s, 0, %s)", (next_id, v)))
                            done.append(("c", next_id))
                            alive.append(next_id)
                            next_id += 1
                    _run_tx(db, conn, changes)
                    self.committed.extend(done)
                    self.transactions += 1
                time.sleep(self.pause)
        except BaseException as exc:  # reported by stop()
            self._error = exc
        finally:
            if conn is not None:
                conn.close()


# ---- cdc run -------------------------------------------------------------------------------

@dataclass
class Pipeline:
    """One ``cdc run`` config in ``workdir`` and its processes."""

    workdir: Path
    source: dict
    target_dsn: str | None
    max_in_flight: int = 500
    max_poll: int = 100
    checkpoint: dict | None = None
    kafka: KafkaTopic | None = None  # a Kafka sink too, into this topic
    log_path: Path = field(init=False)
    proc: subprocess.Popen | None = field(default=None, init=False)
    kills: Counter = field(default_factory=Counter, init=False)
    boundaries: list[int] = field(default_factory=list, init=False)  # file size at each crash or fault

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "cdc.log"
        sinks: list[dict] = [{"type": "file", "path": "out/items.jsonl", "batch_size": 50}]
        if self.target_dsn:
            sinks.append({"type": "postgres", "dsn": self.target_dsn, "batch_size": 200,
                          "retry": {"initial_backoff": 0.2, "max_backoff": 2}})
        if self.kafka:
            sinks.append(self.kafka.sink())
        source = {**self.source, "checkpoint": self.checkpoint or {"type": "file", "path": "state/src.json"},
                  "checkpoint_interval": 0, "max_in_flight_events": self.max_in_flight,
                  "max_poll_events": self.max_poll}
        cfg = {"sources": {"src": source}, "pipelines": {"copy": {"source": "src", "sinks": sinks}}}
        self.config = self.workdir / "pipelines.yaml"
        self.config.write_text(yaml.safe_dump(cfg))

    @property
    def out(self) -> Path:
        return self.workdir / "out" / "items.jsonl"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def start(self, crash_at: str | None = None) -> subprocess.Popen:
        assert self.proc is None or self.proc.poll() is not None
        env = {k: v for k, v in os.environ.items() if k != "CDC_CRASH_AT"}
        if crash_at:
            env["CDC_CRASH_AT"] = crash_at
        with open(self.log_path, "ab") as log:
            log.write(f"--- start{' CDC_CRASH_AT=' + crash_at if crash_at else ''}\n".encode())
            self.proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(self.config)],
                                         cwd=self.workdir, stdout=log, stderr=log, env=env)
        return self.proc

    def _crashed(self, how: str) -> None:
        self.kills[how] += 1
        self.fault(how)

    def fault(self, how: str) -> None:
        """Here a crash or another fault that makes cdc deliver again happened: what the
        sinks hold from now on is checked against the bound as its own stretch."""
        size = self.out.stat().st_size if self.out.exists() else 0
        if size and self.proc is not None and self.proc.poll() is None:  # still writing: cut at a line's end
            with open(self.out, "rb") as f:
                f.seek(max(0, size - 65536))
                tail = f.read(size - f.tell())
            size -= len(tail) - (tail.rfind(b"\n") + 1)
        self.boundaries.append(size)
        if self.kafka:
            self.kafka.cut(how)

    def kill(self) -> None:
        """SIGKILL the running process (a random-moment crash)."""
        assert self.proc is not None and self.proc.poll() is None, f"cdc exited on its own\n{self.log()}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._crashed("random")

    def wait_crash_point(self, point: str, timeout: float) -> bool:
        """Wait for the process (started with ``CDC_CRASH_AT``) to kill itself; True if it did,
        False if it did not within ``timeout`` (then it is killed here, as a random crash)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        assert rc == -signal.SIGKILL, f"cdc exited with {rc}, not at the crash point {point}\n{self.log()}"
        self._crashed(point)
        return True

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def discard(self) -> None:
        """Kill the running process, if any, without counting a crash (clean-up after a failure)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def points_reached(self) -> Counter:
        counts: Counter = Counter()
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("cdc: crash point "):
                counts[line.split()[3]] += 1
        return counts


def chaos_rounds(pipe: Pipeline, rng: random.Random, rounds: int, points: list[str],
                 random_share: float = 0.5) -> None:
    """``rounds`` crashes, each of a fresh process: at a random moment, or at a named crash
    point (every one of ``points`` at least once).  A plain process runs afterwards."""
    plan = list(points)
    plan += [rng.choice(points) if rng.random() > random_share else "random" for _ in range(rounds - len(plan))]
    rng.shuffle(plan)
    for how in plan:
        pipe.ensure_dead()
        if how == "random":
            pipe.start()
            time.sleep(rng.uniform(0.4, 2.0))
            pipe.kill()
            continue
        pipe.start(f"{how}:{rng.randint(1, 4)}")
        if not pipe.wait_crash_point(how, 20):  # not reached that often: the first time, then
            pipe.start(f"{how}:1")
            assert pipe.wait_crash_point(how, 30), f"crash point {how} never reached\n{pipe.log()}"
    pipe.start()


# ---- the Kafka topic -----------------------------------------------------------------------------

class KafkaTopic:
    """A topic of ``partitions`` partitions that cdc's Kafka sink writes to, and a consumer
    that reads it back from the start.  ``cut(how)`` notes each partition's end offset at a
    crash or fault, so that the duplicates after it are counted as that fault's."""

    def __init__(self, server, partitions: int = 3) -> None:
        from confluent_kafka import Consumer, TopicPartition
        from confluent_kafka.admin import AdminClient, NewTopic

        self.server, self.partitions = server, partitions
        self.name = unique_name("items").replace("_", "-")
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        admin.create_topics([NewTopic(self.name, partitions, 1)])[self.name].result(60)
        settings = {"bootstrap.servers": server.bootstrap, "group.id": unique_name("chaos"),
                    "enable.auto.commit": False, "auto.offset.reset": "earliest",
                    "logger": logging.getLogger("chaos.kafka")}  # not stderr: the broker is killed
        self._consumer = Consumer(settings)
        # end offsets from a client that never fetches: on the reader's connection the
        # query waits behind its long-poll fetch (0.5 s a partition)
        self._offsets = Consumer(settings)
        self._parts = [TopicPartition(self.name, p, 0) for p in range(partitions)]
        self._consumer.assign(self._parts)
        self.messages: list[tuple[int, int, bytes | None, bytes, bytes]] = []  # partition, offset, key, value, id
        self.ids: set[bytes] = set()
        self._next = [0] * partitions  # offset after the last message read, per partition
        self.cuts: list[tuple[str, list[int]]] = []

    def sink(self) -> dict:
        return {"type": "kafka", "bootstrap_servers": self.server.bootstrap, "topic": self.name,
                "batch_size": 100, "max_batches_in_flight": 4, "delivery_timeout": 5,
                "retry": {"initial_backoff": 0.2, "max_backoff": 2}}

    def ends(self, timeout: float = 60) -> list[int]:
        """Each partition's high watermark (the offset the next message gets); asked again
        while a restarted broker does not know the partitions yet."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + timeout
        while True:
            try:
                return [self._offsets.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in self._parts]
            except KafkaException as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"topic {self.name}: no end offsets after {timeout:.0f}s: {exc}") from None
                time.sleep(0.2)

    def cut(self, how: str) -> None:
        """The ends, once they stopped moving: a killed process's last produce request may
        still be on its way into the broker's log."""
        ends = self.ends()
        for _ in range(20):
            time.sleep(0.03)
            again = self.ends()
            if again == ends:
                break
            ends = again
        self.cuts.append((how, ends))

    def read(self, timeout: float = 0.2) -> int:
        """Read what has arrived; returns how many messages."""
        got = 0
        while True:
            batch = self._consumer.consume(10_000, timeout)
            for m in batch:
                if m.error():
                    continue
                headers = dict(m.headers() or ())
                self.messages.append((m.partition(), m.offset(), m.key(), m.value(), headers.get("id", b"")))
                self.ids.add(headers.get("id", b""))
                self._next[m.partition()] = m.offset() + 1
                got += 1
            if len(batch) < 10_000:
                return got

    def read_to_end(self, timeout: float = 120) -> None:
        ends = self.ends()

        def done() -> bool:
            self.read()
            return all(n >= e for n, e in zip(self._next, ends))
        deadline_wait(f"reading topic {self.name} to its end {ends}", done, timeout, 0)

    def close(self) -> None:
        self._consumer.close()
        self._offsets.close()


@dataclass
class KafkaReport:
    messages: int
    unique: int
    duplicates_per_fault: list[tuple[str, int]]


def check_kafka(topic: KafkaTopic, committed: list[tuple[str, int]], file_events: dict[str, dict],
                bound: int) -> tuple[KafkaReport, dict]:
    """The checks of ``check_file`` on the topic, read to its end: every committed change
    (each message's id, content and key as in the file), per key in commit order, each
    duplicate the same id and content, at most ``bound`` duplicates per crash or fault.
    Order is kept per partition only: a key's changes must all be in one partition
    (the key picks it), and there, the first copy of each change in commit order.
    Returns the report and the rows rebuilt by applying every message in offset order."""
    topic.read_to_end()
    starts = [[ends[p] for _, ends in topic.cuts] for p in range(topic.partitions)]
    dups = [0] * (len(topic.cuts) + 1)  # [0]: before the first cut
    seen: dict[bytes, dict] = {}
    partition_of: dict[int, int] = {}
    got: dict[int, list[str]] = {}
    state: dict[int, tuple] = {}
    for partition, offset, key, value, event_id in sorted(topic.messages, key=lambda m: (m[0], m[1])):
        e = json.loads(value)
        content = {k: v for k, v in e.items() if k != "ts_ms"}
        assert event_id == e["id"].encode(), f"message {partition}:{offset}: id header {event_id!r} is not {e['id']}"
        row_key = int((e["after"] or e["before"] or e["key"])["id"])
        assert json.loads(key) == e["key"] == {"id": row_key}, f"message {partition}:{offset}: key {key!r}"
        assert partition_of.setdefault(row_key, partition) == partition, f"key {row_key} in two partitions"
        first = seen.get(event_id)
        if first is not None:
            assert first == content, f"duplicate {e['id']} differs:\n{first}\n{content}"
            dups[bisect_right(starts[partition], offset)] += 1
        else:
            seen[event_id] = content
            assert file_events.get(e["id"]) == content, f"{e['id']}: the topic and the file differ"
            got.setdefault(row_key, []).append(e["op"])
        if e["op"] == "d":
            state.pop(row_key, None)
        else:
            state[row_key] = (int(e["after"]["id"]), int(e["after"]["n"]), e["after"]["v"])
    by_key: dict[int, list[str]] = {}
    for op, key_id in committed:
        by_key.setdefault(key_id, []).append(op)
    missing = [k for k in by_key if len(got.get(k, [])) < len(by_key[k])]
    assert not missing, f"committed changes of {len(missing)} keys missing from the topic, e.g. {missing[:5]}"
    wrong = [k for k in set(by_key) | set(got) if by_key.get(k) != got.get(k)]
    assert not wrong, (f"per-key order broken for {len(wrong)} keys, e.g. key {wrong[0]}: "
                       f"committed {by_key.get(wrong[0])}, topic {got.get(wrong[0])}")
    assert len(seen) == len(committed), f"{len(seen)} distinct ids in the topic, {len(committed)} committed"
    per_fault = [("start", dups[0])] + [(how, n) for (how, _), n in zip(topic.cuts, dups[1:])]
    over = [(how, n) for how, n in per_fault if n > bound]
    assert not over, f"duplicates per fault above the bound {bound}: {over}"
    return KafkaReport(len(topic.messages), len(seen), per_fault), state


# ---- what the sinks hold -----------------------------------------------------------------------

@dataclass
class FileReport:
    events: int
    unique: int
    duplicates_per_crash: list[int]
    torn: int
    first: dict[str, dict] = field(repr=False, default_factory=dict)  # id -> content but ts_ms


def _identity(e: dict) -> tuple:
    row = e["after"] or e["before"] or e["key"]
    return e["op"], int(row["id"])


def check_file(pipe: Pipeline, committed: list[tuple[str, int]], bound: int) -> tuple[FileReport, dict]:
    """Every committed change, once, in commit order (so per key in order too); each
    duplicate the same id and content; per crash at most ``bound`` duplicates.  Returns
    the report and the rows rebuilt by applying the whole file in order."""
    data = pipe.out.read_bytes()
    cuts = sorted(set(pipe.boundaries)) + [len(data)]
    seen: dict[str, dict] = {}
    order: list[tuple[str, int]] = []
    per_crash: list[int] = []
    state: dict[int, tuple] = {}
    torn = start = 0
    for cut in cuts:
        dups = 0
        for line in data[start:cut].split(b"\n"):
            if not line:
                continue
            try:
                e = json.loads(line)
            except ValueError:
                torn += 1  # a write cut by SIGKILL: the redelivery writes the event again
                continue
            content = {k: v for k, v in e.items() if k != "ts_ms"}
            first = seen.get(e["id"])
            if first is not None:
                assert first == content, f"duplicate {e['id']} differs:\n{first}\n{content}"
                dups += 1
            else:
                seen[e["id"]] = content
                order.append(_identity(e))
            row = e["after"]
            key = int((e["after"] or e["before"] or e["key"])["id"])
            if e["op"] == "d":
                state.pop(key, None)
            else:
                state[key] = (int(row["id"]), int(row["n"]), row["v"])
        per_crash.append(dups)
        start = cut
    missing = Counter(committed) - Counter(order)
    assert not missing, (f"{sum(missing.values())} committed changes never delivered, e.g. {list(missing)[:5]}"
                         + (f" ({torn} torn lines: see test_torn_write.py)" if torn else ""))
    extra = Counter(order) - Counter(committed)
    assert not extra, f"{sum(extra.values())} delivered changes never committed, e.g. {list(extra)[:5]}"
    by_key: dict[int, list[str]] = {}
    for op, key in committed:
        by_key.setdefault(key, []).append(op)
    got: dict[int, list[str]] = {}
    for op, key in order:
        got.setdefault(key, []).append(op)
    wrong = [k for k in by_key if by_key[k] != got.get(k)]
    assert not wrong, f"per-key order broken for {len(wrong)} keys, e.g. {wrong[:3]}"
    assert order == committed, "every change once, in commit order"
    assert max(per_crash[1:], default=0) <= bound, f"duplicates per crash {per_crash} above the bound {bound}"
    return FileReport(len(seen) + sum(per_crash), len(seen), per_crash, torn, seen), state


def source_rows(db) -> dict[int, tuple]:
    return {int(i): (int(i), int(n), v) for i, n, v in db.execute("SELECT id, n, v FROM items")}


def target_rows(dsn: str) -> dict[int, tuple]:
    import psycopg
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        return {int(i): (int(i), int(n), v) for i, n, v in conn.execute("SELECT id, n, v FROM items")}


def wait_caught_up(pipe: Pipeline, db, committed: list, timeout: float = 180) -> None:
    """Until the file and the topic hold every committed change and the mirror equals the source."""
    want = len(committed)
    expected = source_rows(db)

    def done() -> bool:
        assert pipe.proc.poll() is None, f"cdc exited ({pipe.proc.returncode})\n{pipe.log()}"
        if not pipe.out.exists():
            return False
        ids = set()
        for line in pipe.out.read_bytes().split(b"\n"):
            if line.startswith(b'{"id":'):
                ids.add(line[7:line.index(b'"', 7)])
        if len(ids) < want:
            return False
        if pipe.kafka:
            pipe.kafka.read()
            if len(pipe.kafka.ids) < want:
                return False
        return pipe.target_dsn is None or target_rows(pipe.target_dsn) == expected

    deadline_wait("the sinks catching up", done, timeout, 0.5, pipe.log)
