"""A run whose DSNs carry a password: no log line, output or state file shows it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys

import psycopg

from _ops_helpers import ROOT, CdcProcess, insert, make_orders, read_jsonl, slot_lsn, wait_for, write_config
from servers import free_port

PASSWORD = "S3cret-Passw0rd-xyz"

CONFIG = """
metrics: {listen: "127.0.0.1:PORT"}
sources:
  shop:
    type: postgres
    dsn: "{dsn}"
    tables: [orders]
    slot: {slot}
    checkpoint: {type: postgres, dsn: "{dsn}"}
    checkpoint_interval: 0.2
  down:
    type: postgres
    dsn: "host=127.0.0.1 port=DEAD dbname=x user=app password=%s"
    tables: [orders]
    checkpoint: {type: file, path: state/down.json}
pipelines:
  copy:
    source: shop
    sinks: [{type: file, path: out/orders.jsonl}]
  nowhere:
    source: down
    sinks: [{type: file, path: out/down.jsonl}]
""" % PASSWORD


def cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "cdc", "--log-level", "debug", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return proc.stdout + proc.stderr


def _metrics_and_dead_ports() -> tuple[int, int]:
    """A metrics port whose next port is free too (source ``down``, the second, listens on
    port + 1), and a port with nothing behind it that is neither.  Two free_port() calls in a
    row often give neighbours: the dead source's DSN then named its own metrics port."""
    while True:
        metrics, dead = free_port(), free_port()
        if dead in (metrics, metrics + 1):
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", metrics + 1))
            except OSError:
                continue
        return metrics, dead


def test_no_password_in_any_log(tmp_path, pg_server, pg_database):
    make_orders(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE app LOGIN SUPERUSER PASSWORD '{PASSWORD}'") if not conn.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = 'app'").fetchone() else None
    dsn = pg_database.replace("postgres@", f"app:{PASSWORD}@")
    metrics, dead = _metrics_and_dead_ports()
    config = write_config(tmp_path, dsn, CONFIG.replace("PORT", str(metrics)).replace("DEAD", str(dead)))
    insert(pg_database, 1, 3)  # rows there before the first run: its snapshot (a connection of its own) copies them
    out = tmp_path / "out/orders.jsonl"
    outputs = []
    for fmt in ("text", "json"):
        cdc = CdcProcess(config, "--source", "shop", env={"CDC_LOG_LEVEL": "debug", "CDC_LOG_FORMAT": fmt})
        try:
            wait_for(lambda: slot_lsn(pg_database), 60, "the slot")
            if fmt == "text":  # the copy is done once its rows are out: what follows is streamed
                wait_for(lambda: len(read_jsonl(out)) == 3, 60, "the snapshot rows")
                assert [e["op"] for e in read_jsonl(out)] == ["r", "r", "r"]
            insert(pg_database, 100 if fmt == "json" else 4, 3)
            wait_for(lambda: len(read_jsonl(out)) == (9 if fmt == "json" else 6),  # noqa: B023
                     60, "rows")
            cdc.signal(signal.SIGTERM)
            assert cdc.wait(60) == 0
        finally:
            cdc.stop()
        down = CdcProcess(config, "--source", "down", env={"CDC_LOG_LEVEL": "debug", "CDC_LOG_FORMAT": fmt})
        try:
            assert down.wait(60) == 1               # cannot connect: the error is logged
        finally:
            down.stop()
    log = (tmp_path / "cdc.log").read_text()
    json_lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert json_lines and all("message" in line for line in json_lines)
    assert "cannot connect" in log
    outputs.append(log)
    outputs.append(cli("check", str(config)))
    outputs.append(cli("status", str(config)))
    outputs.append(cli("status", str(config), "--json"))
    outputs.append(cli("checkpoint", "show", str(config), "--source", "shop"))
    outputs.append(cli("validate", str(config)))
    bad = write_config(tmp_path, dsn, CONFIG.replace("PORT", "x").replace("tables: [orders]\n    slot",
                                                                            "tabels: [orders]\n    slot"),
                       name="bad.yaml")
    outputs.append(cli("validate", str(bad)))
    outputs.append(cli("run", str(bad)))
    for f in (tmp_path / "state").iterdir():
        outputs.append(f.read_text())
    everything = "\n".join(outputs)
    assert "streaming slot" in everything and "cannot connect" in everything
    assert PASSWORD not in everything


def test_log_lines_that_quote_a_dsn_are_redacted_in_both_formats(pg_database):
    import io
    import logging

    from cdc.event import ChangeEvent
    from cdc.observe.logging import event_fields, setup_logging
    event = ChangeEvent("0/16B3748:0", "c", None, {"id": 1}, {"id": 1}, {}, 0, "public.orders", 23803720)
    try:
        for fmt in ("text", "json"):
            buf = io.StringIO()
            setup_logging("info", fmt, stream=buf)
            log = logging.getLogger("cdc.test")
            log.warning("connecting to %s", f"postgresql://app:{PASSWORD}@127.0.0.1/x")
            log.warning("retrying with host=h password=%s user=app", PASSWORD)
            log.error("sink x: cannot deliver", extra=event_fields(event))
            try:
                raise RuntimeError(f"boom postgresql://u:{PASSWORD}@h/db")
            except RuntimeError:
                log.exception("failed")
            text = buf.getvalue()
            assert PASSWORD not in text and "app:***@" in text and "password=***" in text
            last = text.strip().splitlines()
            if fmt == "json":
                line = json.loads([x for x in last if "cannot deliver" in x][0])
                assert (line["event_id"], line["table"], line["position"]) == \
                    ("0/16B3748:0", "public.orders", event.position_text())
            else:
                assert f"event_id=0/16B3748:0 table=public.orders position={event.position_text()}" in text
    finally:
        setup_logging("warning", "text")


def test_redaction_keeps_messages_that_only_look_like_a_password():
    """A table named ``secret`` and MariaDB's ``(using password: YES)`` are not passwords:
    the ERROR after them was masked (``cannot read public.secret: ***  permission denied``)."""
    from cdc.observe.secrets import redact

    assert redact("cannot read public.secret: ERROR:  permission denied for table secret") == \
        "cannot read public.secret: ERROR:  permission denied for table secret"
    assert redact("Access denied for user 'cdc'@'localhost' (using password: YES)") == \
        "Access denied for user 'cdc'@'localhost' (using password: YES)"
    # still redacted
    assert redact("password=hunter2 host=db") == "password=*** host=db"
    assert redact("secret: hunter2") == "secret: ***"
    assert redact("password: YES-it-is)") == "password: ***"
