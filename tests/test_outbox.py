"""The outbox transform: unit behaviour, then PostgreSQL outbox table -> outbox ->
HTTP sink (a real local server) routed by message type."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from cdc.config import load_config
from cdc.engine import SourceRunner
from cdc.errors import ConfigError
from cdc.event import ChangeEvent
from cdc.transforms.outbox import Outbox

from webhook_server import WebhookServer

SRC = {"name": "shop", "schema": "public", "table": "outbox"}


def row_event(op: str, row: dict, table: str = "outbox") -> ChangeEvent:
    before, after = (row, None) if op == "d" else (None, row)
    return ChangeEvent("0/AA:0", op, before, after, {"id": row["id"]}, {**SRC, "table": table}, 1,
                       f"public.{table}")


ROW = {"id": 7, "message_id": "9f1c-msg", "message_type": "OrderPlaced",
       "payload": {"order": 1, "total": "9.90"}, "status": "new", "fail_count": 0,
       "occurred_at": "2026-11-25T10:00:00Z", "processed_at": None, "failed_at": None}


def test_insert_becomes_a_message():
    out = Outbox(destination="shop.{message_type}")(row_event("c", ROW))
    assert out.id == "9f1c-msg" and out.op == "c" and out.before is None
    assert out.after == {"order": 1, "total": "9.90"} and out.key == {"message_id": "9f1c-msg"}
    assert out.message == {"id": "9f1c-msg", "type": "OrderPlaced", "outbox_id": 7,
                           "occurred_at": "2026-11-25T10:00:00Z"}
    assert out.destination == "shop.OrderPlaced"
    assert out.source == {**SRC} and out.table == "public.outbox"


def test_updates_and_deletes_are_ignored_and_other_tables_pass():
    box = Outbox(tables=["public.outbox"])
    assert box(row_event("u", {**ROW, "status": "processed"})) is None
    assert box(row_event("d", ROW)) is None
    other = row_event("u", {"id": 1}, table="orders")
    assert box(other) is other


def test_text_payload_is_parsed_and_scalars_wrapped():
    box = Outbox()
    assert box(row_event("c", {**ROW, "payload": '{"a": 1}'})).after == {"a": 1}
    assert box(row_event("c", {**ROW, "payload": "plain"})).after == {"payload": "plain"}
    assert box(row_event("c", {**ROW, "payload": [1, 2]})).after == {"payload": [1, 2]}


def test_bad_template_and_missing_columns():
    with pytest.raises(ConfigError, match="unknown template field"):
        Outbox(destination="{nope}")
    with pytest.raises(ValueError, match="message_type"):
        Outbox()(row_event("c", {"id": 1, "message_id": "x", "payload": {}}))


def test_outbox_table_to_webhooks_by_type(pg_database, tmp_path):
    slot = "cdc_" + pg_database.rsplit("/", 1)[1]
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("""CREATE TABLE outbox (
            id bigserial PRIMARY KEY, message_id uuid UNIQUE NOT NULL, message_type text NOT NULL,
            payload jsonb NOT NULL, status text NOT NULL DEFAULT 'new', fail_count int NOT NULL DEFAULT 0,
            occurred_at timestamptz NOT NULL DEFAULT now(), processed_at timestamptz, failed_at timestamptz)""")
    with WebhookServer() as server:
        config = tmp_path / "p.yaml"
        config.write_text(f"""
sources:
  shop: {{type: postgres, dsn: "{pg_database}", slot: {slot}, tables: [outbox], checkpoint: {{type: memory}}, snapshot: never}}
pipelines:
  messages:
    source: shop
    transforms: [{{type: outbox, destination: "{{message_type}}"}}]
    sinks:
      - {{type: http, url: "{server.url}/events/{{destination}}", batch_size: 1, content: payload}}
""")
        runner = SourceRunner(load_config(config), "shop", grace_period=20)
        thread = threading.Thread(target=runner.run)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while runner.source.stream is None and time.monotonic() < deadline:
                time.sleep(0.05)
            with psycopg.connect(pg_database, autocommit=True) as conn:
                with conn.transaction():  # the business change and its message, in one transaction
                    conn.execute("INSERT INTO outbox (message_id, message_type, payload) VALUES "
                                 "('00000000-0000-0000-0000-000000000001', 'OrderPlaced', %s),"
                                 "('00000000-0000-0000-0000-000000000002', 'UserCreated', %s)",
                                 ('{"order": 1}', '{"user": 5}'))
                conn.execute("UPDATE outbox SET status = 'processed', processed_at = now()")
                conn.execute("DELETE FROM outbox")
                conn.execute("INSERT INTO outbox (message_id, message_type, payload) VALUES "
                             "('00000000-0000-0000-0000-000000000003', 'OrderPlaced', %s)", ('{"order": 2}',))
            while len(server.accepted) < 3 and time.monotonic() < deadline + 30:
                time.sleep(0.1)
            while not runner.tracker.drained and time.monotonic() < deadline + 30:
                time.sleep(0.1)
        finally:
            runner.request_stop()
            thread.join(60)
        assert runner.error is None
        got = [(r.path, r.json, r.headers["idempotency-key"]) for r in server.requests]
        assert got == [("/events/OrderPlaced", {"order": 1}, "00000000-0000-0000-0000-000000000001"),
                       ("/events/UserCreated", {"user": 5}, "00000000-0000-0000-0000-000000000002"),
                       ("/events/OrderPlaced", {"order": 2}, "00000000-0000-0000-0000-000000000003")]
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


def test_worked_example_in_pipelines_yaml_is_valid(tmp_path):
    """The commented outbox example in pipelines.yaml, uncommented, validates."""
    import shutil
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    text = (root / "pipelines.yaml").read_text()
    head, tail = text.split("# ---- Transactional outbox")
    example = tail.split("then:\n#\n", 1)[1]
    pipeline = "\n".join(line[1:] for line in example.splitlines() if line.startswith("#"))
    head = head.replace("tables: [public.orders, public.customers]",
                        "tables: [public.orders, public.customers, public.outbox]")
    (tmp_path / "p.yaml").write_text(head + pipeline + "\n")
    shutil.copy(root / "myplugins.py", tmp_path)
    config = load_config(tmp_path / "p.yaml", env={"WEBHOOK_SECRET": "whsec_c2VjcmV0"})
    spec = config.pipelines["order-messages"]
    assert [t.type for t in spec.transforms] == ["outbox"]
    assert spec.sinks[0].on_error == "dead_letter" and spec.sinks[0].dead_letter.type == "file"
