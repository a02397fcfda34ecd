"""`cdc run` on the repository's own pipelines.yaml, `cdc status`, and `cdc demo`."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pgutil import sql, wait_for_lines

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_runs_as_written(pg_database, tmp_path):
    """The issue's example: filter + select + the only_paid plugin to a file, customers to stdout."""
    sql(pg_database,
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(20),"
        " amount numeric(12,2), note varchar(200), created_at timestamp)",
        "CREATE TABLE customers (id bigint PRIMARY KEY, name text)")
    shutil.copy(ROOT / "pipelines.yaml", tmp_path)
    shutil.copy(ROOT / "myplugins.py", tmp_path)
    env = {"SHOP_DSN": pg_database, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", "pipelines.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while not sql(pg_database, "SELECT 1 FROM pg_replication_slots WHERE active"):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.1)
        sql(pg_database,
            "INSERT INTO customers VALUES (1, 'Ann')",
            "INSERT INTO orders (id, customer_id, status) VALUES (1, 1, 'new'), (2, 1, 'paid')",
            "UPDATE orders SET status = 'paid' WHERE id = 1",
            "DELETE FROM orders WHERE id = 2")
        paid = wait_for_lines(tmp_path / "out/order-status.jsonl", 2)
        status = subprocess.run([sys.executable, "-m", "cdc", "status", "pipelines.yaml", "--json"],
                                cwd=tmp_path, env=env, capture_output=True, text=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    assert [(e["op"], e["after"]) for e in paid] == [("c", {"id": 2, "status": "paid"}),
                                                     ("u", {"id": 1, "status": "paid"})]
    customers = [json.loads(line) for line in out.decode().splitlines()]
    # the example copies existing rows first (snapshot: initial): Ann may also come as op r
    assert [(c["op"], c["after"]) for c in customers if c["op"] != "r"] == [("c", {"id": 1, "name": "Ann"})]
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert row["source"] == "shop" and row["position"]["lsn"].count("/") == 1
    assert row["lag_bytes"] >= 0 and row["slot"].startswith("cdc_")
    assert row["checkpoint_age_s"] < 60


def test_demo_prints_events_and_cleans_up():
    before = set(Path("/tmp").glob("cdc-demo-*"))
    proc = subprocess.run([sys.executable, "-m", "cdc", "demo", "--duration", "6", "--rate", "5"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(events) >= 5
    assert {e["op"] for e in events} <= {"c", "u"} and set(events[0]["after"]) == {"id", "status"}
    assert "change events captured" in proc.stderr
    assert set(Path("/tmp").glob("cdc-demo-*")) == before  # nothing left behind
