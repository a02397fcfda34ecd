"""Error policy and dead letters through the real engine: PostgreSQL source -> HTTP
sink (a real local server that refuses one event) -> file / table DLQ -> cdc dlq."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import orjson
import psycopg
import pytest
from click.testing import CliRunner

from cdc.cli import main
from cdc.config import load_config
from cdc.deadletter import store_for
from cdc.engine import SourceRunner
from cdc.engine.deadletters import DeadLetterWriter
from cdc.errors import PermanentSinkError
from cdc.event import ChangeEvent
from cdc.sinks.mirror import order_key

from webhook_server import WebhookServer


@pytest.fixture
def server():
    with WebhookServer() as s:
        yield s


@pytest.fixture
def shop(pg_database):
    """A database with an orders table; its replication slot is dropped afterwards."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL)")
    yield pg_database
    slot = slot_name(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                     " WHERE slot_name = %s AND NOT active", (slot,))


def slot_name(dsn: str) -> str:
    return "cdc_" + dsn.rsplit("/", 1)[1]


def write_config(tmp_path: Path, dsn: str, pipeline: str) -> Path:
    path = tmp_path / "pipelines.yaml"
    path.write_text(f"""
sources:
  shop:
    type: postgres
    dsn: {dsn}
    slot: {slot_name(dsn)}
    tables: [public.orders]
    checkpoint: {{type: file, path: state/shop.json}}
    checkpoint_interval: 0.1
    snapshot: never  # about streamed changes and their dead letters, not about the copy
pipelines:
{pipeline}
""")
    return path


class Running:
    """A SourceRunner on a thread, stopped (drained) on exit."""

    def __init__(self, config: Path) -> None:
        self.runner = SourceRunner(load_config(config), "shop", grace_period=20)
        self.thread = threading.Thread(target=self._run)
        self.rc = None

    def _run(self) -> None:
        self.rc = self.runner.run()

    def __enter__(self) -> SourceRunner:
        self.thread.start()
        deadline = time.monotonic() + 30  # wait until the slot streams
        while self.runner.source.stream is None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.runner

    def __exit__(self, *exc) -> None:
        self.runner.request_stop()
        self.thread.join(60)


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_refused_event_is_parked_in_file_dlq_and_replayed(shop, server, tmp_path):
    config = write_config(tmp_path, shop, f"""
  orders:
    source: shop
    sinks:
      - type: http
        name: webhook
        url: {server.url}/orders
        batch_size: 10
        on_error: dead_letter
        retry: {{max_attempts: 3, initial_backoff: 0.05}}
        dead_letter: {{type: file, path: dlq/orders.jsonl}}
""")
    server.reject(b'"status":"poison"', 400)
    with Running(config) as runner:
        with psycopg.connect(shop, autocommit=True) as conn:
            conn.execute("INSERT INTO orders VALUES (1, 'new')")
            conn.execute("INSERT INTO orders VALUES (2, 'poison')")
            conn.execute("INSERT INTO orders VALUES (3, 'new')")
        delivered = lambda: [e["after"]["id"] for r in server.accepted  # noqa: E731
                             for e in (r.json if isinstance(r.json, list) else [r.json])]
        wait_for(lambda: delivered() == [1, 3])
        wait_for(lambda: runner.tracker.drained)
    assert runner.error is None
    assert runner.workers[0].counts["dead_lettered"] == 1
    saved = orjson.loads((tmp_path / "state/shop.json").read_bytes())["position"]
    assert saved == runner.saved_position

    (record,) = [orjson.loads(line) for line in (tmp_path / "dlq/orders.jsonl").read_bytes().splitlines()]
    info = record["message"]["dead_letter"]
    assert record["after"] == {"id": 2, "status": "poison"} and record["op"] == "c"
    assert record["source"]["table"] == "orders" and record["id"]
    assert info["sink"] == "webhook" and info["pipeline"] == "orders"
    assert info["error"]["type"] == "PermanentSinkError" and "HTTP 400" in info["error"]["message"]
    assert info["error"]["permanent"] is True and info["attempts"] == 1
    assert info["first_failure"] <= info["last_failure"]
    parked_commit = record["id"].split(":")[0]
    assert order_key(f"{saved['lsn']}:0") > order_key(f"{parked_commit}:0")  # the checkpoint moved past it

    cli = CliRunner()
    listed = cli.invoke(main, ["dlq", "list", str(config)])
    assert listed.exit_code == 0, listed.output
    assert info["id"] in listed.output and "HTTP 400" in listed.output
    failing = cli.invoke(main, ["dlq", "replay", str(config)])  # still refused: entry stays
    assert failing.exit_code == 1 and "still failing" in failing.stderr
    server.accept_all()
    replayed = cli.invoke(main, ["dlq", "replay", str(config), "--sink", "webhook", "--id", info["id"]])
    assert replayed.exit_code == 0, replayed.output + replayed.stderr
    last = server.accepted[-1]
    assert last.json["id"] == record["id"] and last.json["after"] == {"id": 2, "status": "poison"}
    assert "message" not in last.json and last.headers["idempotency-key"] == record["id"]
    listed = cli.invoke(main, ["dlq", "list", str(config), "--json"])
    assert listed.exit_code == 0 and listed.output.strip() == ""


def test_transform_error_goes_to_pipeline_dead_letter(shop, server, tmp_path):
    (tmp_path / "boom.py").write_text(
        "def check(event):\n"
        "    if event.after['status'] == 'bad':\n"
        "        raise ValueError('bad status')\n"
        "    return event\n")
    config = write_config(tmp_path, shop, f"""
  orders:
    source: shop
    on_error: dead_letter
    dead_letter: {{type: file, path: dlq/transforms.jsonl}}
    transforms:
      - {{type: python, function: "boom:check"}}
    sinks:
      - {{type: http, name: webhook, url: "{server.url}", batch_size: 1}}
""")
    with Running(config) as runner:
        with psycopg.connect(shop, autocommit=True) as conn:
            with conn.transaction():
                for i, status in enumerate(["ok", "bad", "ok"]):
                    conn.execute("INSERT INTO orders VALUES (%s, %s)", (i, status))
        wait_for(lambda: len(server.accepted) == 2)
        wait_for(lambda: runner.tracker.drained)
    assert runner.error is None and runner.counts["transform_dead_lettered"] == 1
    (record,) = [orjson.loads(x) for x in (tmp_path / "dlq/transforms.jsonl").read_bytes().splitlines()]
    info = record["message"]["dead_letter"]
    assert info["sink"] == "transforms" and "bad status" in info["error"]["message"]
    assert info["error"]["type"] == "TransformError"
    # the transform still refuses it: replay keeps the entry
    cli = CliRunner()
    assert cli.invoke(main, ["dlq", "replay", str(config)]).exit_code == 1
    assert len(cli.invoke(main, ["dlq", "list", str(config), "--json"]).output.splitlines()) == 1
    # fixed transform: replay runs it again and sends the event to the pipeline's sinks
    (tmp_path / "boom.py").write_text("def check(event):\n    return event\n")
    sys.modules.pop("boom", None)
    result = cli.invoke(main, ["dlq", "replay", str(config), "--id", record["id"]])
    assert result.exit_code == 0, result.output
    assert server.accepted[-1].json["after"] == {"id": 1, "status": "bad"}
    assert cli.invoke(main, ["dlq", "list", str(config), "--json"]).output == ""


def test_transform_error_stops_by_default(shop, server, tmp_path):
    (tmp_path / "boom2.py").write_text("def check(event):\n    raise ValueError('nope')\n")
    config = write_config(tmp_path, shop, f"""
  orders:
    source: shop
    transforms: [{{type: python, function: "boom2:check"}}]
    sinks: [{{type: http, url: "{server.url}"}}]
""")
    with Running(config) as runner:
        with psycopg.connect(shop, autocommit=True) as conn:
            conn.execute("INSERT INTO orders VALUES (1, 'x')")
        wait_for(lambda: runner.error is not None)
    assert "nope" in str(runner.error) and server.requests == []


def test_table_dlq_lists_and_removes(pg_database, tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text(f"""
sources:
  shop: {{type: postgres, dsn: "{pg_database}", tables: [orders], checkpoint: {{type: memory}}, snapshot: never}}
pipelines:
  orders:
    source: shop
    sinks:
      - type: stdout
        on_error: dead_letter
        dead_letter: {{type: table, dsn: "{pg_database}", table: dlq.parked}}
""")
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA dlq")
    spec = load_config(config).pipelines["orders"].sinks[0]
    writer = DeadLetterWriter(spec.dead_letter.build(), "orders")
    ev = ChangeEvent("0/AB:0", "u", {"id": 1}, {"id": 1, "v": "x"}, {"id": 1},
                     {"name": "shop", "schema": "public", "table": "orders"}, 5, "public.orders",
                     destination="topic-a")
    writer.park(ev, spec.context.name, PermanentSinkError("refused"), 4, time.time() - 10)
    writer.close()
    store = store_for(spec.dead_letter)
    (entry,) = store.list()
    assert entry.event == ev and entry.event.destination == "topic-a"
    assert entry.attempts == 4 and entry.sink == spec.context.name and entry.first_failure < entry.last_failure
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT event_id, sink FROM dlq.parked").fetchall() == [("0/AB:0", spec.context.name)]
    cli = CliRunner()
    result = cli.invoke(main, ["dlq", "replay", str(config)])
    assert result.exit_code == 0, result.stderr
    assert store.list() == []


def test_policy_config_errors_name_the_key_path(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("""
sources:
  shop: {type: postgres, dsn: "postgresql://x@127.0.0.1/x", tables: [orders], checkpoint: {type: memory}}
pipelines:
  a:
    source: shop
    on_error: explode
    sinks: [{type: http, url: "http://127.0.0.1:1", content: weird}]
  b:
    source: shop
    on_error: dead_letter
    sinks: [{type: http, url: "http://127.0.0.1:1", on_error: dead_letter}]
""")
    result = CliRunner().invoke(main, ["validate", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    for path in ("pipelines.a.on_error", "pipelines.a.sinks[0].content", "pipelines.b.dead_letter",
                 "pipelines.b.sinks[0].dead_letter"):
        assert path in result.output, result.output


def test_failing_dead_letter_queue_halts_and_keeps_the_checkpoint(server, tmp_path):
    """If the DLQ itself is down, the event is neither delivered nor parked: the sink halts."""
    import socket

    from cdc.config import Context, RetryOptions, SinkSpec
    from cdc.engine import AckTracker, SinkWorker
    from cdc.sinks.http import HttpSink
    from cdc.sinks.table import TableSink
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    server.reject(b"poison", 400)
    spec = SinkSpec("http", HttpSink, {}, "sinks[0]", Context(tmp_path, name="hook"), on_error="dead_letter",
                    retry=RetryOptions(2, 0.01, 0.02))
    writer = DeadLetterWriter(TableSink(f"postgresql://x@127.0.0.1:{dead_port}/x"), "p", attempts=2)
    tracker, fatal = AckTracker(), []
    worker = SinkWorker(spec, HttpSink(server.url), tracker, lambda n, e: fatal.append(e), writer)
    worker.start()
    seq = tracker.add(1, {"lsn": "0/5"}, 1, 0)
    worker.submit(seq, [ChangeEvent("0/5:0", "c", None, {"s": "poison"}, None, {"table": "t"}, 1, "t")])
    wait_for(lambda: fatal, 30)
    worker.stop(5)
    assert "cannot connect" in str(fatal[0]) and tracker.position is None


# ---- replay to a database mirror: a parked event behind newer ones is superseded -----------

def test_mirror_replay_of_superseded_event_keeps_the_entry(shop, pg_server, tmp_path):
    """e1 is refused by the mirror and parked; e0 and e2 are applied, so the mirror's position
    for the table is past e1. Replaying e1 must neither apply it (it would overwrite newer
    rows) nor drop the entry as if it had been replayed."""
    target = pg_server.create_database(f"mirror_{shop.rsplit('/', 1)[1]}")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status varchar(5) NOT NULL)")
    config = write_config(tmp_path, shop, f"""
  orders:
    source: shop
    sinks:
      - type: postgres
        name: copy
        dsn: "{target}"
        batch_size: 10
        on_error: dead_letter
        retry: {{max_attempts: 2, initial_backoff: 0.05}}
        dead_letter: {{type: file, path: dlq/copy.jsonl}}
""")
    mirrored = lambda: [tuple(r) for r in psycopg.connect(target).execute(  # noqa: E731
        "SELECT id, status FROM orders ORDER BY id").fetchall()]
    with Running(config) as runner:
        with psycopg.connect(shop, autocommit=True) as conn:
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES (0, 'new')")
                conn.execute("INSERT INTO orders VALUES (1, 'poison')")  # too long for varchar(5)
                conn.execute("INSERT INTO orders VALUES (2, 'new')")
        wait_for(lambda: runner.tracker.drained and runner.workers[0].counts["dead_lettered"] == 1)
    assert runner.error is None and mirrored() == [(0, "new"), (2, "new")]
    with psycopg.connect(target, autocommit=True) as conn:  # the operator fixes the column
        conn.execute("ALTER TABLE orders ALTER COLUMN status TYPE text")

    cli = CliRunner()
    result = cli.invoke(main, ["dlq", "replay", str(config)])
    assert mirrored() == [(0, "new"), (2, "new")]  # not applied over newer changes
    assert result.exit_code == 3, result.output + result.stderr
    assert "superseded" in result.stderr and "replayed 0, superseded 1, failed 0" in result.output
    listed = cli.invoke(main, ["dlq", "list", str(config), "--json"])
    (entry,) = [orjson.loads(line) for line in listed.output.splitlines()]  # the entry stays
    assert entry["event"]["after"] == {"id": 1, "status": "poison"}
    # found by review: it said "apply it by hand" for each entry, never the way back that works
    assert "1 dead letter(s) of public.orders superseded" in result.stderr, result.stderr
    assert f"cdc snapshot {config} --source shop --table public.orders" in result.stderr, result.stderr
    # once the table is copied again, the superseded entries can go
    assert f"cdc dlq replay {config} --sink copy --drop-superseded" in result.stderr, result.stderr
    dropped = cli.invoke(main, ["dlq", "replay", str(config), "--sink", "copy", "--drop-superseded"])
    assert dropped.exit_code == 0 and "replayed 0, superseded 1 (dropped), failed 0" in dropped.output, \
        dropped.output + dropped.stderr
    assert cli.invoke(main, ["dlq", "list", str(config), "--json"]).output.strip() == ""
    assert mirrored() == [(0, "new"), (2, "new")]


def test_replay_with_destination_down_keeps_entries_and_redacts(tmp_path):
    """Nothing listens on the mirror's port: replay reports it (password redacted, no
    traceback), keeps the dead letter, counts it as failed and exits 1."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    config = tmp_path / "p.yaml"
    config.write_text(f"""
sources:
  shop: {{type: postgres, dsn: "postgresql://x@127.0.0.1:1/x", tables: [orders], checkpoint: {{type: memory}}}}
pipelines:
  orders:
    source: shop
    sinks:
      - type: postgres
        name: copy
        dsn: "postgresql://cdc:s3cr3tpw@127.0.0.1:{dead_port}/shop?password=s3cr3tpw"
        on_error: dead_letter
        dead_letter: {{type: file, path: dlq.jsonl}}
""")
    spec = load_config(config).pipelines["orders"].sinks[0]
    writer = DeadLetterWriter(spec.dead_letter.build(), "orders")
    for n in (1, 2):
        writer.park(ChangeEvent(f"0/AB:{n}", "c", None, {"id": n}, {"id": n},
                                {"table": "orders"}, 5, "public.orders"), "copy", PermanentSinkError("x"), 1, None)
    writer.close()
    result = CliRunner().invoke(main, ["dlq", "replay", str(config)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exc_info
    assert "orders/copy: cannot open: TransientSinkError: cannot connect" in result.stderr
    assert "2 dead letter(s) kept" in result.stderr and "replayed 0, superseded 0, failed 2" in result.output
    assert "s3cr3tpw" not in result.output + result.stderr and "Traceback" not in result.stderr
    assert len(store_for(spec.dead_letter).list()) == 2
