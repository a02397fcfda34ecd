"""`cdc checkpoint set|reset` of a MariaDB source while a `cdc run` of it streams on another
machine (its own state_dir, so its lock is not seen; the checkpoint store shared)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from _ops_helpers import CdcProcess, wait_for
from _ops_helpers import cdc_command as cdc
from mysql_helpers import db_of, execute


def mariadb_config(where: Path, dsn: str, store: Path, server_id: int) -> Path:
    """A config in ``where`` (its own state_dir) whose checkpoint file is ``store``, as a
    file on a shared disk would be."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / "pipelines.yaml"
    path.write_text(f"""
sources:
  shop:
    type: mysql
    dsn: "{dsn}"
    tables: [orders]
    server_id: {server_id}
    checkpoint: {{type: file, path: "{store}"}}
    checkpoint_interval: 0.2
    snapshot: never
    heartbeat_interval: 2  # a stopped reader's dump thread goes within two heartbeats
pipelines:
  copy:
    source: shop
    sinks:
      - {{type: file, path: out/orders.jsonl}}
""")
    return path


def saved(store: Path) -> dict | None:
    try:
        return json.loads(store.read_text())["position"]
    except (OSError, ValueError):
        return None


def test_checkpoint_set_and_reset_are_refused_while_a_mariadb_source_streams_on_another_machine(
        mariadb_server, mariadb_database, tmp_path):
    """Before: refused only while the local `cdc run` held its lock.  A `cdc run` of the same
    source on another machine, sharing the checkpoint store, had its position moved or forgotten
    under it (exit 0), and overwrote the change at its next checkpoint.  Its binlog dump on the
    server tells that it runs: refused, naming where, with what to do."""
    db = db_of(mariadb_database)
    execute(mariadb_server, db, "CREATE TABLE orders (id int PRIMARY KEY, note text)")
    dsn = mariadb_server.dsn(db, user="cdc")
    store = tmp_path / "shared/shop.json"
    server = mariadb_config(tmp_path / "server", dsn, store, 4242)
    laptop = mariadb_config(tmp_path / "laptop", dsn, store, 4242)
    run = CdcProcess(server)
    try:
        wait_for(lambda: saved(store) or run.proc.poll() is not None, 60, "the first checkpoint")
        assert run.proc.poll() is None, run.text()
        execute(mariadb_server, db, "INSERT INTO orders VALUES (1, 'one')")
        wait_for(lambda: (tmp_path / "server/out/orders.jsonl").exists(), 30, "the first row")
        before = store.read_text()
        position = {k: v for k, v in saved(store).items() if k != "server"}
        moved = cdc(laptop, "checkpoint", "set", "--position", json.dumps(position))
        assert moved.returncode == 1, (moved.stdout, moved.stderr)
        assert "stop it first" in moved.stderr and "Traceback" not in moved.stderr, moved.stderr
        assert "127.0.0.1" in moved.stderr, moved.stderr  # where it reads from
        reset = cdc(laptop, "checkpoint", "reset", "--yes")
        assert reset.returncode == 1 and "stop it first" in reset.stderr, (reset.stdout, reset.stderr)
        assert "forgotten" not in reset.stdout
        assert json.loads(store.read_text())["position"] == json.loads(before)["position"] or saved(store)
        assert "cdc:cdc@" not in moved.stderr + reset.stderr  # no password
        # a source of the same server read by another user (its own store) is not held up by it
        other_store = tmp_path / "other/shop.json"
        other_store.parent.mkdir()
        other_store.write_text(store.read_text())
        other = mariadb_config(tmp_path / "other", mariadb_server.dsn(db, user="root"), other_store, 4343)
        moved = cdc(other, "checkpoint", "set", "--position", json.dumps(position))
        assert moved.returncode == 0 and "waiting" not in moved.stderr, (moved.stdout, moved.stderr)
    finally:
        run.signal(signal.SIGTERM)
        code = run.wait(60)
        run.stop()
    assert code == 0, run.text()
    moved = cdc(laptop, "checkpoint", "set", "--position", json.dumps(
        {k: v for k, v in saved(store).items() if k != "server"}))
    assert moved.returncode == 0, moved.stderr  # stopped: allowed
    # at once: the stopped reader ended its binlog dump on the server (it did not linger until
    # the server's next two writes to it, heartbeats 10 s apart)
    assert "waiting" not in moved.stderr, moved.stderr
