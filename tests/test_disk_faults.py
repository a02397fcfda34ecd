"""What cdc does when a disk it writes to misbehaves: full (a 64 KiB tmpfs mounted for the
test; needs root), read-only, removed or corrupted, while `cdc run` streams from a real
PostgreSQL and at start-up.  Each test says what must not happen: a change lost or skipped
silently, a checkpoint past an event not durably handled, a traceback for an operator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from cdc.checkpoints.file import FileCheckpointStore
from cdc.config import Context
from cdc.errors import CheckpointError

from _ops_helpers import ROOT, CdcProcess, basic_config, ids, insert, make_orders, read_jsonl, streaming, wait_for
from _ops_helpers import cdc_command as cdc


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` to the last byte, then free ``leave`` bytes (whole pages on tmpfs)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.ftruncate(fd, max(os.fstat(fd).st_size - leave, 0))
        os.close(fd)
    return filler


# ---- the file checkpoint store ------------------------------------------------------------


def test_a_checkpoint_save_that_fills_the_disk_keeps_the_old_checkpoint(small_disk):
    """A short write (the disk filled part-way through a position bigger than one page, as a
    snapshot's progress over many tables is) must not replace the checkpoint with a torn one."""
    store = FileCheckpointStore(str(small_disk / "shop.json"), context=Context(small_disk, source="shop"))
    store.save({"lsn": "0/10"})
    fill(small_disk, leave=4096)
    progress = {"snapshot": {"tables": {f"public.table_{n}": {"done": False, "after": [n]} for n in range(300)}}}
    with pytest.raises(CheckpointError, match="No space left on device"):
        store.save({"lsn": "0/20", **progress})
    assert store.load() == {"lsn": "0/10"}
    assert sorted(os.listdir(small_disk)) == ["filler", "shop.json"]  # no temp file holding the space
    (small_disk / "filler").unlink()
    store.save({"lsn": "0/30", **progress})
    assert store.load() == {"lsn": "0/30", **progress}


@pytest.mark.parametrize("content", ["", "null", "{}", "[1, 2]", '"0/1A2B3C8"', '{"source": "shop"}',
                                     "{broken"])
def test_an_unusable_checkpoint_file_stops_the_start_with_the_recovery(pg_database, tmp_path, content):
    """Empty (a crash of a filesystem that does not order data and rename), garbage, or JSON
    without a position: cdc must not start over from the current position as if it had
    never run, nor die with a traceback."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    (tmp_path / "state").mkdir()
    (tmp_path / "state/shop.json").write_text(content)
    run = CdcProcess(config)
    try:
        code = run.wait(60)
    finally:
        run.stop()
    log = run.text()
    assert code == 1, log
    assert "Traceback" not in log
    assert "state/shop.json" in log and "cdc checkpoint reset" in log, log
    assert (tmp_path / "state/shop.json").read_text() == content  # left for the operator to look at
    assert not (tmp_path / "out/orders.jsonl").exists()


def test_checkpoint_reset_and_show_work_on_an_unreadable_checkpoint(pg_database, tmp_path):
    """The documented way out of an unreadable checkpoint must itself work on it."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    (tmp_path / "state").mkdir()
    (tmp_path / "state/shop.json").write_text('{"source": "shop", "position": {"lsn": "0/1A')
    shown = cdc(config, "checkpoint", "show", "--source", "shop")
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert "state/shop.json" in shown.stderr, shown.stderr
    reset = cdc(config, "checkpoint", "reset", "--source", "shop", "--yes", "--keep-slot")
    assert reset.returncode == 0, reset.stderr
    assert not (tmp_path / "state/shop.json").exists()
    assert '{"source": "shop", "position": {"lsn": "0/1A' in reset.stdout  # what was forgotten


@pytest.mark.parametrize("fault", ["full", "read-only", "removed"])
def test_checkpoint_disk_fault_while_running_then_cleared(pg_database, tmp_path, small_disk, fault):
    """The checkpoint's disk fills, turns read-only or loses the file's directory while cdc
    streams: the position stays where it was saved (a WARNING names the path), delivery goes
    on, and once the fault clears the checkpoint catches up; a restart neither skips nor repeats."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    checkpoint = small_disk / "state/shop.json"
    config.write_text(config.read_text().replace("path: state/shop.json", f"path: {checkpoint}"))
    run = streaming(config, pg_database)
    try:
        insert(pg_database, 1, 10)
        wait_for(lambda: len(ids(tmp_path / "out/orders.jsonl")) == 10, what="10 rows")
        wait_for(lambda: checkpoint.exists(), what="a checkpoint")
        saved = json.loads(checkpoint.read_text())["position"]
        if fault == "full":
            filler = fill(small_disk)
            # a save in flight during the fill frees the old file's page when it lands, and every later
            # save then reuses a page it frees (the rehearsal saw no failed save): none runs after the
            # rows are acknowledged, so once it has landed, take that page too
            time.sleep(1.5)
            fill(small_disk)
        elif fault == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        else:  # moved away at once (an rmtree raced a save writing its temporary file into it: CI, once)
            (small_disk / "state").rename(small_disk / "gone")
            shutil.rmtree(small_disk / "gone", ignore_errors=True)
        if fault != "removed":  # a save may have landed before the fault: none can after it
            saved = json.loads(checkpoint.read_text())["position"]
        insert(pg_database, 11, 10)
        wait_for(lambda: len(ids(tmp_path / "out/orders.jsonl")) == 20, what="20 rows")
        if fault != "removed":
            wait_for(lambda: "cannot write checkpoint" in run.text(), what="the warning")
            assert json.loads(checkpoint.read_text())["position"] == saved
            if fault == "full":
                filler.unlink()
            else:
                subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
        wait_for(lambda: checkpoint.exists() and json.loads(checkpoint.read_text())["position"] != saved,
                 what="the checkpoint to catch up")
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()
    assert fault == "removed" or str(checkpoint) in run.text()
    insert(pg_database, 21, 5)
    again = CdcProcess(config)
    try:
        wait_for(lambda: len(ids(tmp_path / "out/orders.jsonl")) >= 25, what="25 rows")
        again.signal(signal.SIGTERM)
        assert again.wait(60) == 0
    finally:
        again.stop()
    assert ids(tmp_path / "out/orders.jsonl") == list(range(1, 26))


# ---- the file sink ------------------------------------------------------------------------


def test_file_sink_directory_removed_mid_run_loses_nothing_after_it(pg_database, tmp_path):
    """`rm -rf out/` while cdc runs: the events after it must land in a new file at the
    configured path, not in the removed file that no one can read (acknowledged, so the
    checkpoint moves past them, and lost)."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    run = streaming(config, pg_database)
    try:
        insert(pg_database, 1, 10)
        wait_for(lambda: len(ids(tmp_path / "out/orders.jsonl")) == 10, what="10 rows")
        shutil.rmtree(tmp_path / "out")
        insert(pg_database, 11, 10)
        wait_for(lambda: ids(tmp_path / "out/orders.jsonl") == list(range(11, 21)), timeout=30,
                 what="the rows after the removal in a new file")
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()
    assert "out/orders.jsonl" in run.text() and "WARNING" in run.text()


def test_file_sink_file_renamed_mid_run_is_reopened(pg_database, tmp_path):
    """Rotation by rename (logrotate without copytruncate): what was delivered before is in the
    renamed file, what comes after in a new file at the path; nothing twice, nothing lost.  (A
    batch written but not yet acknowledged when the rename lands is taken back from the old
    file and written to the new one: rows 1-10 may end up in either.)"""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    run = streaming(config, pg_database)
    old, new = tmp_path / "out/orders.jsonl.1", tmp_path / "out/orders.jsonl"
    try:
        insert(pg_database, 1, 10)
        wait_for(lambda: len(ids(new)) == 10, what="10 rows")
        os.rename(new, old)
        insert(pg_database, 11, 10)
        wait_for(lambda: new.exists() and len(ids(old) + ids(new)) >= 20, timeout=30, what="a new file")
        assert ids(new)[-10:] == list(range(11, 21))
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()
    assert ids(old) + ids(new) == list(range(1, 21))


# ---- the dead-letter queue ----------------------------------------------------------------


def test_a_poison_event_is_not_acknowledged_when_its_dead_letter_file_is_full(pg_database, tmp_path, small_disk):
    """The dead-letter file's disk is full when an event must be parked: the event is neither
    delivered nor parked, so cdc must stop (exit 1, an ERROR naming the file) with the
    checkpoint before it; once space is freed, a restart parks it and delivers the rest."""
    from webhook_server import WebhookServer

    make_orders(pg_database)
    with WebhookServer() as server:
        server.reject(b'"note":"poison"', 400)
        config = basic_config(tmp_path, pg_database, sink=(
            f"{{type: http, url: '{server.url}/orders', on_error: dead_letter, batch_size: 1, "
            f"retry: {{max_attempts: 2, initial_backoff: 0.05}}, "
            f"dead_letter: {{type: file, path: {small_disk}/dlq.jsonl}}}}"))
        run = streaming(config, pg_database)
        try:
            insert(pg_database, 1, 3)
            wait_for(lambda: len(server.accepted) == 3, what="3 rows delivered")
            filler = fill(small_disk)
            with psycopg.connect(pg_database, autocommit=True) as conn:
                conn.execute("INSERT INTO orders VALUES (4, 'poison')")
                poison_lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            insert(pg_database, 5, 3)
            code = run.wait(90)
        finally:
            run.stop()
        log = run.text()
        assert code == 1, log
        assert "Traceback" not in log and f"{small_disk}/dlq.jsonl" in log and "ERROR" in log, log
        saved = json.loads((tmp_path / "state/shop.json").read_text())["position"]["lsn"]
        with psycopg.connect(pg_database) as conn:
            assert conn.execute("SELECT %s::pg_lsn < %s::pg_lsn", (saved, poison_lsn)).fetchone()[0]
        assert not (small_disk / "dlq.jsonl").exists() or not read_jsonl(small_disk / "dlq.jsonl")

        filler.unlink()
        again = CdcProcess(config)
        try:
            wait_for(lambda: read_jsonl(small_disk / "dlq.jsonl"), what="the poison event parked")
            wait_for(lambda: {r.json["after"]["id"] for r in server.accepted} >= {1, 2, 3, 5, 6, 7},
                     what="every other row delivered")
            again.signal(signal.SIGTERM)
            assert again.wait(60) == 0
        finally:
            again.stop()
    (parked,) = read_jsonl(small_disk / "dlq.jsonl")
    assert parked["after"] == {"id": 4, "note": "poison"}


# ---- the status file ----------------------------------------------------------------------


@pytest.mark.parametrize("content", ["[1, 2]", '"running"', "null", '{"sinks": [1], "pipelines": 3}',
                                     '{"running": true, "pid": 1, "snapshot": {"tables": 5}, "updated_at": "x"}',
                                     '{"running": true, "pid": 1, "snapshot": {"tables": 5, "state": 7}}'])
def test_cdc_status_reads_a_corrupted_status_file_without_a_traceback(pg_database, tmp_path, content):
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    (tmp_path / "state").mkdir()
    (tmp_path / "state/shop.status.json").write_text(content)
    for args in (("status",), ("status", "--json")):
        shown = subprocess.run(
            [sys.executable, "-m", "cdc", *args, str(config)], capture_output=True, text=True, timeout=60,
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        assert "shop" in shown.stdout


def test_a_full_status_disk_is_said_once_and_streaming_goes_on(pg_database, tmp_path, small_disk):
    """state_dir (lock and status file) on a disk that fills while cdc runs: the status file
    goes stale, which a WARNING naming it says once; delivery and checkpoints go on."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database, extra=f"state_dir: {small_disk}")
    run = streaming(config, pg_database)
    try:
        wait_for(lambda: (small_disk / "shop.status.json").exists(), what="the status file")
        filler = fill(small_disk)
        insert(pg_database, 1, 10)
        wait_for(lambda: len(ids(tmp_path / "out/orders.jsonl")) == 10, what="10 rows")
        wait_for(lambda: "cannot write the status file" in run.text(), what="the warning")
        filler.unlink()
        wait_for(lambda: json.loads((small_disk / "shop.status.json").read_text())["acknowledged"] == 10,
                 what="the status file to catch up")
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()
    assert run.text().count("cannot write the status file") == 1
    assert f"{small_disk}/shop.status.json" in run.text()
    assert json.loads((tmp_path / "state/shop.json").read_text())["position"]


def test_a_checkpoint_saved_reading_another_database_is_refused(pg_server, tmp_path):
    """Two deployments both name their source `shop`; B's state directory gets A's checkpoint
    (a restored backup, a copied directory).  Resuming B from A's LSN skipped, silently,
    every change of B up to it; it must stop, naming both databases, until B's own file is back."""
    a, b = (pg_server.create_database(f"{n}_{os.urandom(4).hex()}") for n in "ab")
    for dsn, name in ((a, "A"), (b, "B")):
        make_orders(dsn)
        (tmp_path / name).mkdir()
    config_a, config_b = basic_config(tmp_path / "A", a), basic_config(tmp_path / "B", b)
    out_b = tmp_path / "B/out/orders.jsonl"
    run = streaming(config_b, b)
    try:
        insert(b, 1, 2)
        wait_for(lambda: len(ids(out_b)) == 2, what="B's first rows")
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()
    insert(b, 3, 5)                      # while B's cdc is stopped
    run = streaming(config_a, a)
    try:
        insert(a, 100, 5)                # A's checkpoint moves past B's rows 3..7 in the WAL
        wait_for(lambda: len(ids(tmp_path / "A/out/orders.jsonl")) == 5, what="A's rows")
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()
    own = (tmp_path / "B/state/shop.json").read_bytes()
    shutil.copy(tmp_path / "A/state/shop.json", tmp_path / "B/state/shop.json")
    run = CdcProcess(config_b)
    try:
        code = run.wait(60)
    finally:
        run.stop()
    assert code == 1, run.text()
    assert a.rsplit("/", 1)[1] in run.text() and b.rsplit("/", 1)[1] in run.text() and "Traceback" not in run.text()
    assert ids(out_b) == [1, 2]
    (tmp_path / "B/state/shop.json").write_bytes(own)  # the recovery: B's own checkpoint back
    run = CdcProcess(config_b)
    try:
        wait_for(lambda: len(ids(out_b)) == 7, what="B's rows 3..7")
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()
    assert ids(out_b) == list(range(1, 8))
    assert json.loads((tmp_path / "B/state/shop.json").read_text())["database"] == b.rsplit("/", 1)[1]


# ---- the snapshot's progress in the checkpoint --------------------------------------------


def test_snapshot_progress_on_a_full_disk_resumes_from_the_last_saved_chunk(pg_database, tmp_path, small_disk):
    """The checkpoint's disk fills in the middle of the initial copy and cdc is killed before
    space is freed: the checkpoint still holds the progress saved before the disk filled, and
    the restart copies on from there (every row, none of the chunks saved before again)."""
    rows = 30000
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
        conn.execute("INSERT INTO orders SELECT n, repeat('x', 50) FROM generate_series(1, %s) n", (rows,))
    config = basic_config(tmp_path, pg_database)
    checkpoint = small_disk / "shop.json"
    config.write_text(config.read_text().replace("path: state/shop.json", f"path: {checkpoint}")
                      .replace("snapshot: never", "snapshot: initial\n    snapshot_chunk_size: 100\n"
                                                          "    snapshot_parallelism: 1\n    max_in_flight_events: 100"))
    out = tmp_path / "out/orders.jsonl"

    def progress() -> dict | None:
        try:
            queue = json.loads(checkpoint.read_text())["position"]["snapshot"].get("queue") or []
        except (OSError, ValueError, KeyError):
            return None
        return queue[0] if queue and queue[0].get("rows", 0) >= 1000 else None

    run = CdcProcess(config)
    try:
        deadline = time.monotonic() + 120
        while not progress() and time.monotonic() < deadline:
            time.sleep(0.01)
        fill(small_disk)
        before = progress()
        assert before, "the copy was over before the disk could be filled"
        wait_for(lambda: "cannot write checkpoint" in run.text(), what="the warning")
        wait_for(lambda: len(read_jsonl(out)) >= rows, what="the copy to finish", timeout=120)
        run.signal(signal.SIGKILL)
        run.wait(30)
    finally:
        run.stop()
    saved = progress()
    assert saved == before and saved["rows"] < rows, saved
    (small_disk / "filler").unlink()
    first = len(read_jsonl(out))
    again = CdcProcess(config)
    try:
        wait_for(lambda: json.loads(checkpoint.read_text())["position"]["snapshot"].get("queue") == [],
                 what="the copy to be done", timeout=120)
        again.signal(signal.SIGTERM)
        assert again.wait(60) == 0
    finally:
        again.stop()
    events = read_jsonl(out)
    copied_again = [e["after"]["id"] for e in events[first:] if e["op"] == "r"]
    assert {e["after"]["id"] for e in events if e["op"] == "r"} == set(range(1, rows + 1))
    assert min(copied_again) == saved["after"][0] + 1 and len(copied_again) == rows - saved["rows"], \
        (saved, min(copied_again), len(copied_again))


# ---- a database mirror's target runs out of disk ------------------------------------------


@pytest.fixture
def server_disk():
    """A 1 MiB tmpfs the PostgreSQL server (user postgres) can reach: pytest's tmp_path is
    private to root."""
    mount = Path(tempfile.mkdtemp(prefix="cdc-disk-", dir="/tmp"))
    mount.chmod(0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
        mount.rmdir()


def test_postgres_mirror_target_out_of_disk_waits_and_then_applies_everything(pg_database, pg_server, tmp_path,
                                                                             server_disk):
    """The mirror's table lives in a tablespace on the small disk; the disk fills while cdc
    streams.  PostgreSQL refuses to extend the table (DiskFull): cdc must retry (the checkpoint
    stays before the rows), not skip or park them, and apply every row once space is freed."""
    make_orders(pg_database)
    target = pg_server.create_database(f"mirror_{pg_database.rsplit('/', 1)[1]}")
    space = f"disk_{pg_database.rsplit('/', 1)[1]}"
    small_disk = server_disk
    shutil.chown(small_disk, "postgres", "postgres")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE {space} LOCATION '{small_disk}'")
        conn.execute(f"CREATE TABLE orders (id int PRIMARY KEY, note text) TABLESPACE {space}")
        conn.execute(f"ALTER INDEX orders_pkey SET TABLESPACE {space}")
    config = basic_config(tmp_path, pg_database, sink=(
        f"{{type: postgres, dsn: '{target}', on_error: dead_letter, "
        f"retry: {{max_attempts: 0, initial_backoff: 0.2, max_backoff: 1}}, "
        f"dead_letter: {{type: file, path: dlq/orders.jsonl}}}}"))
    mirrored = lambda: psycopg.connect(target).execute("SELECT count(*) FROM orders").fetchone()[0]  # noqa: E731
    run = streaming(config, pg_database)
    try:
        insert(pg_database, 1, 10)
        wait_for(lambda: mirrored() == 10, what="10 rows mirrored")
        filler = fill(small_disk)
        insert(pg_database, 11, 2000, per_tx=100)
        wait_for(lambda: "No space left on device" in run.text(), what="the disk to be full")
        saved = json.loads((tmp_path / "state/shop.json").read_text())["position"]
        filler.unlink()
        wait_for(lambda: mirrored() == 2010, what="every row mirrored", timeout=120)
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {target.rsplit('/', 1)[1]} WITH (FORCE)")
            conn.execute(f"DROP TABLESPACE IF EXISTS {space}")
    assert not (tmp_path / "dlq/orders.jsonl").exists()
    assert saved != json.loads((tmp_path / "state/shop.json").read_text())["position"]


def test_mariadb_mirror_target_out_of_disk_waits_and_then_applies_everything(pg_database, mariadb_database,
                                                                            tmp_path, server_disk):
    """As above, into MariaDB: the mirror's table has its DATA DIRECTORY on the small disk.
    InnoDB answers 1114 'The table is full' (or an error writing the file): cdc must retry,
    not park the rows as dead letters while the disk is full."""
    import pymysql

    from cdc.sinks._db import mysql_params

    make_orders(pg_database)
    shutil.chown(server_disk, "mysql", "mysql")
    params = {**mysql_params(mariadb_database), "autocommit": True}
    with pymysql.connect(**params) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE orders (id int PRIMARY KEY, note text) DATA DIRECTORY = '{server_disk}'")

    def mirrored() -> int:
        with pymysql.connect(**params) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders")
            return cur.fetchone()[0]

    config = basic_config(tmp_path, pg_database, sink=(
        f"{{type: mysql, dsn: '{mariadb_database}', on_error: dead_letter, "
        f"retry: {{max_attempts: 0, initial_backoff: 0.2, max_backoff: 1}}, "
        f"dead_letter: {{type: file, path: dlq/orders.jsonl}}}}"))
    run = streaming(config, pg_database)
    try:
        insert(pg_database, 1, 10)
        wait_for(lambda: mirrored() == 10, what="10 rows mirrored")
        filler = fill(server_disk)
        insert(pg_database, 11, 3000, per_tx=100)
        wait_for(lambda: "is full" in run.text(), what="the disk to be full", timeout=120)
        filler.unlink()
        wait_for(lambda: mirrored() == 3010, what="every row mirrored", timeout=120)
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()
        with pymysql.connect(**params) as conn, conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS orders")
    assert not (tmp_path / "dlq/orders.jsonl").exists(), read_jsonl(tmp_path / "dlq/orders.jsonl")[:1]


# ---- the lock file in state_dir -----------------------------------------------------------


def test_checkpoint_commands_with_a_full_or_read_only_state_dir(pg_database, tmp_path, small_disk):
    """`cdc checkpoint reset` takes the source's lock in state_dir.  On a full disk the lock
    still works (its pid is only informative); on a read-only one the command says so, and
    `cdc checkpoint show` and `cdc status` (which only ask whether it is held) still answer."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database, extra=f"state_dir: {small_disk}")
    (tmp_path / "state").mkdir()
    (tmp_path / "state/shop.json").write_text('{"source": "shop", "position": {"lsn": "0/10"}}')
    fill(small_disk)
    reset = cdc(config, "checkpoint", "reset", "--source", "shop", "--yes", "--keep-slot")
    assert reset.returncode == 0 and "Traceback" not in reset.stderr, reset.stderr
    assert not (tmp_path / "state/shop.json").exists()
    (tmp_path / "state/shop.json").write_text('{"source": "shop", "position": {"lsn": "0/10"}}')
    (small_disk / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for args in (("checkpoint", "show", "--source", "shop"), ("status", "--json")):
        shown = cdc(config, *args)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        assert "0/10" in shown.stdout
    reset = cdc(config, "checkpoint", "reset", "--source", "shop", "--yes", "--keep-slot")
    assert reset.returncode == 1 and "Traceback" not in reset.stderr, reset.stderr
    assert str(small_disk) in reset.stderr and "Read-only file system" in reset.stderr, reset.stderr
    assert (tmp_path / "state/shop.json").exists()


def test_dlq_replay_with_its_file_on_a_full_disk_keeps_the_file_whole(pg_database, tmp_path, small_disk):
    """`cdc dlq replay` marks a replayed entry removed by appending a line to the dead-letter
    file.  On a full disk that line can be cut (a short write into the last free bytes of a
    page): the file must stay whole, and replay must say the entry was replayed but is still
    listed (so a second replay delivers it again), not die with a traceback."""
    from cdc.deadletter.record import dead_letter_event
    from cdc.errors import PermanentSinkError
    from cdc.event import ChangeEvent
    from cdc.sinks.file import FileSink

    make_orders(pg_database)
    dlq = small_disk / "dlq.jsonl"
    config = basic_config(tmp_path, pg_database, sink=(
        f"{{type: file, path: out/orders.jsonl, on_error: dead_letter, dead_letter: {{type: file, path: {dlq}}}}}"))
    parked = FileSink(str(dlq))
    parked.write([dead_letter_event(
        ChangeEvent(f"0/1A:{n}", "c", None, {"id": n, "note": "x" * 300}, {"id": n},
                    {"name": "shop", "schema": "public", "table": "orders"}, 1, "public.orders"),
        "copy.sinks[0]:file", "copy", PermanentSinkError("refused"), 1, None) for n in range(1, 4)])
    parked.close()
    with dlq.open("ab") as f:  # blank lines (ignored) up to 10 bytes short of a page boundary
        f.write(b"\n" * ((4096 - 10 - dlq.stat().st_size) % 4096))
    fill(small_disk)           # no page left: a removal line gets its first 10 bytes written, no more
    before = dlq.read_bytes()
    replay = cdc(config, "dlq", "replay")
    assert replay.returncode == 1 and "Traceback" not in replay.stderr, replay.stderr
    assert str(dlq) in replay.stderr and "No space left on device" in replay.stderr, replay.stderr
    assert dlq.read_bytes() == before                      # no torn removal line
    listed = cdc(config, "dlq", "list")
    assert listed.returncode == 0 and listed.stdout.count("refused") == 3, listed.stdout + listed.stderr
    (small_disk / "filler").unlink()
    replay = cdc(config, "dlq", "replay")
    assert replay.returncode == 0, replay.stderr
    assert ids(tmp_path / "out/orders.jsonl")[-3:] == [1, 2, 3]
    assert "refused" not in cdc(config, "dlq", "list").stdout


def test_a_snapshot_request_on_a_full_state_dir_is_refused_clearly(pg_database, tmp_path, small_disk):
    """`cdc snapshot --table` writes its request in state_dir: a full disk says nothing was requested."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database, extra=f"state_dir: {small_disk}")
    fill(small_disk)
    asked = cdc(config, "snapshot", "--source", "shop", "--table", "orders")
    assert asked.returncode == 1 and "Traceback" not in asked.stderr, asked.stderr
    assert f"{small_disk}/shop.snapshots" in asked.stderr and "nothing was requested" in asked.stderr
    (small_disk / "filler").unlink()
    asked = cdc(config, "snapshot", "--source", "shop", "--table", "orders")
    assert asked.returncode == 0, asked.stderr
    assert len(list((small_disk / "shop.snapshots").glob("*.request"))) == 1


def test_stopping_while_the_checkpoint_cannot_be_saved_is_an_error_with_the_position(mariadb_server, mariadb_database,
                                                                                    tmp_path, small_disk):
    """MariaDB, first run, the checkpoint's disk read-only from the start: rows are delivered,
    but no position is ever saved.  A SIGTERM that exits 0 makes the next start a first run
    again, at the end of the binlog: the rows written while cdc was stopped are silently
    skipped.  The stop must be an error (exit 1) giving the position to save, and saving it
    with `cdc checkpoint set` once the disk is writable must deliver those rows."""
    import pymysql

    from cdc.sinks._db import mysql_params

    db = mariadb_database.rsplit("/", 1)[1]
    params = {**mysql_params(mariadb_database), "autocommit": True}

    def insert_rows(first: int, count: int) -> None:
        with pymysql.connect(**params) as conn, conn.cursor() as cur:
            for n in range(first, first + count):
                cur.execute("INSERT INTO orders VALUES (%s, 'x')", (n,))

    with pymysql.connect(**params) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
    config = tmp_path / "pipelines.yaml"
    config.write_text(f"""
sources:
  legacy:
    type: mysql
    dsn: "{mariadb_server.dsn(db, user='cdc')}"
    server_id: 4377
    tables: [{db}.orders]
    checkpoint: {{type: file, path: {small_disk}/legacy.json}}
    checkpoint_interval: 0.2
    snapshot: never
pipelines:
  copy:
    source: legacy
    sinks: [{{type: file, path: out/orders.jsonl}}]
""")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    out = tmp_path / "out/orders.jsonl"
    run = CdcProcess(config)
    try:
        wait_for(lambda: "cannot write checkpoint" in run.text() or run.proc.poll() is not None,
                 what="the first save to fail")
        insert_rows(1, 5)
        wait_for(lambda: len(ids(out)) == 5, what="5 rows")
        run.signal(signal.SIGTERM)
        code = run.wait(60)
    finally:
        run.stop()
    log = run.text()
    assert code == 1, log
    assert "Traceback" not in log and "stopped without saving its position" in log, log
    position = log.split("--position '", 1)[1].split("'\n", 1)[0]
    insert_rows(6, 3)                                   # while cdc is stopped
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    saved = cdc(config, "checkpoint", "set", "--source", "legacy", "--position", position)
    assert saved.returncode == 0, saved.stderr
    again = CdcProcess(config)
    try:
        wait_for(lambda: len(ids(out)) >= 8, what="the rows written while stopped")
        again.signal(signal.SIGTERM)
        assert again.wait(60) == 0, again.text()
    finally:
        again.stop()
    assert ids(out) == list(range(1, 9))


def test_state_dir_removed_while_running_is_made_again(pg_database, tmp_path):
    """`rm -rf` of state_dir (here apart from the checkpoint) while cdc runs: the status file
    is written again, delivery and checkpoints go on."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database, extra=f"state_dir: {tmp_path}/run")
    status = tmp_path / "run/shop.status.json"
    run = streaming(config, pg_database)
    try:
        wait_for(status.exists, what="the status file")
        shutil.rmtree(tmp_path / "run")
        insert(pg_database, 1, 10)
        wait_for(lambda: len(ids(tmp_path / "out/orders.jsonl")) == 10, what="10 rows")
        wait_for(lambda: status.exists() and json.loads(status.read_text())["acknowledged"] == 10,
                 what="the status file written again")
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()


@pytest.mark.parametrize("value", ["null", '"0/1A2B3C8"', "[1]"])
def test_a_postgres_checkpoint_row_without_a_position_is_refused(pg_database, value):
    """The postgres store's row edited by hand to JSON that is no position: refused like the
    file store's, never taken for no checkpoint; reset still works."""
    from cdc.checkpoints.postgres import PostgresCheckpointStore

    store = PostgresCheckpointStore(pg_database, context=Context(".", source="shop"))
    store.save({"lsn": "0/10"})
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"UPDATE cdc_checkpoints SET position = '{value}'::jsonb WHERE source = 'shop'")
    with pytest.raises(CheckpointError, match="not a position.*cdc checkpoint reset"):
        store.load()
    store.reset()
    assert store.load() is None
    store.close()


def test_a_lock_file_removed_while_running_is_taken_again(pg_database, tmp_path):
    """`rm -rf state/` while cdc runs removed its lock file: a second `cdc run` of the source
    (or `cdc checkpoint reset`, whose change the running process would then overwrite) was no
    longer refused.  The running process takes its lock again."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    run = streaming(config, pg_database)
    try:
        wait_for((tmp_path / "state/shop.lock").exists, what="the lock")
        shutil.rmtree(tmp_path / "state")
        wait_for((tmp_path / "state/shop.lock").exists, what="the lock taken again", timeout=30)
        reset = cdc(config, "checkpoint", "reset", "--source", "shop", "--yes", "--keep-slot")
        assert reset.returncode == 1 and "is running" in reset.stderr, reset.stderr
        second = CdcProcess(config)
        assert second.wait(60) == 1
        insert(pg_database, 1, 5)
        wait_for(lambda: len(ids(tmp_path / "out/orders.jsonl")) == 5, what="5 rows")
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0
    finally:
        run.stop()
    assert "is running" in run.text()
