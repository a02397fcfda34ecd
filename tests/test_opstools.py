"""The operator's tools used as a new user paged at night would: every `cdc` command against
real servers (PostgreSQL, MariaDB), on a running and on a stopped pipeline.  Each test names
what must not happen: a traceback, exit 0 after a failure, a password printed, a command that
silently does nothing, a hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from cdc.checkpoints.postgres import PostgresCheckpointStore
from cdc.config import Context
from cdc.errors import CheckpointError

from _ops_helpers import ROOT, CdcProcess, basic_config, ids, insert, make_orders, read_jsonl, slot_lsn, streaming, wait_for
from _ops_helpers import cdc_command as cdc


def stop(run: CdcProcess) -> None:
    try:
        run.signal(signal.SIGTERM)
        assert run.wait(60) == 0, run.text()
    finally:
        run.stop()


# ---- the postgres checkpoint store records the database its positions belong to ----------


def postgres_store_config(tmp_path: Path, dsn: str, store_dsn: str) -> Path:
    config = basic_config(tmp_path, dsn)
    config.write_text(config.read_text().replace(
        "{type: file, path: state/shop.json}", f'{{type: postgres, dsn: "{store_dsn}"}}'))
    return config


def test_a_postgres_checkpoint_saved_reading_another_database_is_refused(pg_server, pg_database, tmp_path):
    """Two deployments both name their source `shop`; B is moved to the checkpoint table A
    uses (one ops database for both).  Resuming B from A's LSN skipped, silently, every change
    of B up to it; it must stop, naming both databases, as the file store does."""
    a, b = (pg_server.create_database(f"{n}_{os.urandom(4).hex()}") for n in "ab")
    for dsn, name in ((a, "A"), (b, "B")):
        make_orders(dsn)
        (tmp_path / name).mkdir()
    out_b = tmp_path / "B/out/orders.jsonl"
    run = streaming(basic_config(tmp_path / "B", b), b)  # B on its own file store first
    try:
        insert(b, 1, 2)
        wait_for(lambda: len(ids(out_b)) == 2, what="B's first rows")
    finally:
        stop(run)
    insert(b, 3, 5)  # while B's cdc is stopped
    run = streaming(postgres_store_config(tmp_path / "A", a, pg_database), a)
    try:
        insert(a, 100, 5)  # A's checkpoint moves past B's rows 3..7 in the WAL
        wait_for(lambda: len(ids(tmp_path / "A/out/orders.jsonl")) == 5, what="A's rows")
    finally:
        stop(run)
    config_b = postgres_store_config(tmp_path / "B", b, pg_database)  # same source name, same table
    run = CdcProcess(config_b)
    try:
        code = run.wait(60)
    finally:
        run.stop()
    names = a.rsplit("/", 1)[1], b.rsplit("/", 1)[1]
    assert code == 1, run.text()
    assert all(name in run.text() for name in names) and "Traceback" not in run.text(), run.text()
    assert "cdc checkpoint reset" in run.text()
    assert ids(out_b) == [1, 2]
    shown = cdc(config_b, "checkpoint", "show")
    assert shown.returncode == 1 and all(name in shown.stderr for name in names), shown.stderr
    assert "Traceback" not in shown.stderr


def test_a_postgres_checkpoint_row_without_a_database_is_accepted_and_then_records_it(pg_database):
    """A row saved before the store recorded databases (no database column, or NULL in it)
    is taken as it is; the next save records the database."""
    with psycopg.connect(pg_database, autocommit=True) as conn:  # the table as older versions made it
        conn.execute("CREATE TABLE cdc_checkpoints (source text PRIMARY KEY, position jsonb NOT NULL,"
                     " saved_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("""INSERT INTO cdc_checkpoints (source, position) VALUES ('shop', '{"lsn": "0/10"}')""")
    store = PostgresCheckpointStore(pg_database, context=Context(".", source="shop"))
    store.bind_database("a")
    try:
        assert store.load() == {"lsn": "0/10"}
        store.save({"lsn": "0/20"})
        other = PostgresCheckpointStore(pg_database, context=Context(".", source="shop"))
        other.bind_database("b")
        try:
            with pytest.raises(CheckpointError, match="saved reading database a, but source shop now reads "
                                                      "database b"):
                other.load()
            with pytest.raises(CheckpointError, match="database a"):
                other.save({"lsn": "0/99"})  # nor overwrites it, even without a load first
        finally:
            other.close()
        assert store.load() == {"lsn": "0/20"}
    finally:
        store.close()
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT database FROM cdc_checkpoints").fetchall() == [("a",)]


def test_checkpoint_reset_forgets_a_position_saved_reading_another_database(pg_database, tmp_path):
    """The refusal says `cdc checkpoint reset` starts over; reset itself refused the position
    it was meant to forget (it loads it first, to print it).  It works, for both stores, and
    says what it forgot; a file owned by another source is still refused (it is that source's)."""
    config = tmp_path / "p.yaml"
    dsn_b = pg_database.rsplit("/", 1)[0] + "/bdb"
    config.write_text(f"""
sources:
  shop:
    type: postgres
    dsn: "{dsn_b}"
    tables: [orders]
    checkpoint: {{type: file, path: state/shop.json}}
pipelines:
  p: {{source: shop, sinks: [{{type: stdout}}]}}
""")
    (tmp_path / "state").mkdir()
    saved = {"source": "shop", "database": "adb", "position": {"lsn": "0/10"}, "saved_at": 1}
    (tmp_path / "state/shop.json").write_text(json.dumps(saved))
    reset = cdc(config, "checkpoint", "reset", "--yes", "--keep-slot")
    assert reset.returncode == 0, reset.stderr
    assert "0/10" in reset.stdout and "adb" in reset.stdout, reset.stdout
    assert not (tmp_path / "state/shop.json").exists()

    (tmp_path / "state/shop.json").write_text(json.dumps({**saved, "source": "legacy"}))
    reset = cdc(config, "checkpoint", "reset", "--yes", "--keep-slot")
    assert reset.returncode == 1 and "legacy" in reset.stderr and "Traceback" not in reset.stderr
    assert (tmp_path / "state/shop.json").exists()

    store = PostgresCheckpointStore(pg_database, context=Context(".", source="shop"))
    store.bind_database("adb")
    store.save({"lsn": "0/20"})
    store.close()
    config.write_text(config.read_text().replace("{type: file, path: state/shop.json}",
                                                 f'{{type: postgres, dsn: "{pg_database}"}}'))
    assert cdc(config, "checkpoint", "show").returncode == 1
    reset = cdc(config, "checkpoint", "reset", "--yes", "--keep-slot")
    assert reset.returncode == 0, reset.stderr
    assert "0/20" in reset.stdout and "adb" in reset.stdout, reset.stdout
    shown = cdc(config, "checkpoint", "show")
    assert shown.returncode == 0 and json.loads(shown.stdout)["position"] is None, shown.stderr
    again = cdc(config, "checkpoint", "reset", "--yes", "--keep-slot")  # printed "position null forgotten"
    assert again.returncode == 0 and "no position was saved" in again.stdout, again


# ---- cdc checkpoint set ------------------------------------------------------------------


@pytest.mark.parametrize("progress", ['"junk"', '{"tables": "public.orders"}', '{"queue": [1]}',
                                      '{"tables": [], "queue": [{"table": "public.orders"}]}'])
def test_checkpoint_set_refuses_a_snapshot_progress_that_is_not_one(pg_database, tmp_path, progress):
    """`--position` may give the snapshot progress beside the log position.  Anything was
    saved, and the next `cdc run` died on it with a traceback (AttributeError)."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    run = streaming(config, pg_database)
    try:
        insert(pg_database, 1, 1)
        wait_for((tmp_path / "state/shop.json").exists, what="the checkpoint")
    finally:
        stop(run)
    before = (tmp_path / "state/shop.json").read_text()
    lsn = json.loads(before)["position"]["lsn"]
    result = cdc(config, "checkpoint", "set", "--position", f'{{"lsn": "{lsn}", "snapshot": {progress}}}')
    assert result.returncode == 1 and "snapshot" in result.stderr and "Traceback" not in result.stderr, result
    assert (tmp_path / "state/shop.json").read_text() == before
    shown = json.loads(cdc(config, "checkpoint", "show").stdout)["position"]
    good = cdc(config, "checkpoint", "set", "--position", json.dumps({"lsn": lsn, "snapshot": shown["snapshot"]}))
    assert good.returncode == 0, good.stderr  # what `show` prints is accepted back


# ---- the postgres checkpoint store while cdc runs ----------------------------------------


@pytest.mark.parametrize("fault, repair", [
    ("REVOKE ALL ON cdc_checkpoints FROM ckpt_user", "GRANT ALL ON cdc_checkpoints TO ckpt_user"),
    ("DROP TABLE cdc_checkpoints", None),  # made again by cdc at its next save
])
def test_a_postgres_checkpoint_table_revoked_or_dropped_while_running_is_retried(pg_database, tmp_path,
                                                                                   fault, repair):
    """A DBA revokes cdc's rights on the checkpoint table (or drops it) while cdc runs.  The
    save died with a psycopg traceback (InsufficientPrivilege, UndefinedTable), stopping
    delivery; a disk fault of the file store is a WARNING, delivery goes on and the checkpoint
    catches up once it is fixed.  The postgres store must do the same."""
    make_orders(pg_database)
    user = f"ckpt_user_{os.urandom(3).hex()}"
    fault, repair = fault.replace("ckpt_user", user), repair and repair.replace("ckpt_user", user)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {user} LOGIN")
        conn.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {user}")
    store_dsn = pg_database.replace("postgres@", f"{user}@")
    config = postgres_store_config(tmp_path, pg_database, store_dsn)
    out = tmp_path / "out/orders.jsonl"

    def saved() -> str | None:
        with psycopg.connect(pg_database) as conn:
            try:
                row = conn.execute("SELECT position->>'lsn' FROM cdc_checkpoints WHERE source = 'shop'").fetchone()
            except psycopg.errors.UndefinedTable:
                return None
        return row[0] if row else None

    run = streaming(config, pg_database)
    try:
        insert(pg_database, 1, 2)
        wait_for(saved, what="the first checkpoint")
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(fault)
        insert(pg_database, 3, 3)
        wait_for(lambda: len(ids(out)) == 5, what="rows 3..5 delivered while the checkpoint fails")
        wait_for(lambda: "retrying" in run.text(), what="the WARNING")
        assert run.proc.poll() is None, run.text()
        if repair:
            with psycopg.connect(pg_database, autocommit=True) as conn:
                conn.execute(repair)
        wait_for(lambda: saved() == slot_lsn(pg_database), what="the checkpoint to catch up", timeout=30)
    finally:
        stop(run)
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {user}")
            conn.execute(f"DROP ROLE {user}")
    assert "Traceback" not in run.text(), run.text()


def test_checkpoint_set_and_reset_are_refused_while_cdc_runs_on_another_machine(pg_database, tmp_path):
    """The lock in state_dir only sees a `cdc run` of the same machine.  With a postgres
    checkpoint store, an operator on another machine could `set` or `reset` the position of a
    running cdc: both said they did it (exit 0), and the running process overwrote the change
    at its next checkpoint.  The source's slot in use tells that it runs: refused."""
    make_orders(pg_database)
    (tmp_path / "server").mkdir()
    (tmp_path / "laptop").mkdir()
    config = postgres_store_config(tmp_path / "server", pg_database, pg_database)
    elsewhere = postgres_store_config(tmp_path / "laptop", pg_database, pg_database)  # its own state_dir

    def saved() -> dict | None:
        with psycopg.connect(pg_database) as conn:
            row = conn.execute("SELECT position FROM cdc_checkpoints WHERE source = 'shop'").fetchone()
        return row[0] if row else None

    run = streaming(config, pg_database)
    try:
        insert(pg_database, 1, 2)
        wait_for(lambda: saved() and saved()["lsn"] == slot_lsn(pg_database), what="the checkpoint")
        with psycopg.connect(pg_database) as conn:  # never before the slot, which moves on while idle
            now = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        moved = cdc(elsewhere, "checkpoint", "set", "--position", json.dumps({"lsn": now}))
        assert moved.returncode == 1 and "in use" in moved.stderr and "stop it first" in moved.stderr, moved
        reset = cdc(elsewhere, "checkpoint", "reset", "--yes", "--drop-slot")
        assert reset.returncode == 1 and "in use" in reset.stderr and "forgotten" not in reset.stdout, reset
        assert slot_lsn(pg_database)  # not dropped
    finally:
        stop(run)
    moved = cdc(elsewhere, "checkpoint", "set", "--position", json.dumps({"lsn": saved()["lsn"]}))
    assert moved.returncode == 0, moved.stderr  # stopped: allowed


def test_checkpoint_reset_help_says_what_the_next_run_does(pg_database, tmp_path):
    """`cdc checkpoint reset --help` said the next run starts from the source's current
    position.  With the slot kept, a PostgreSQL source streams from the slot (a change made
    while stopped is delivered), and copies its tables again: the help says so."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    out = tmp_path / "out/orders.jsonl"
    run = streaming(config, pg_database)
    try:
        insert(pg_database, 1, 1)
        wait_for(lambda: ids(out) == [1], what="row 1")
    finally:
        stop(run)
    reset = cdc(config, "checkpoint", "reset", "--yes", "--keep-slot")
    assert reset.returncode == 0, reset.stderr
    insert(pg_database, 2, 1)  # while stopped, after the reset
    run = CdcProcess(config)
    try:
        wait_for(lambda: 2 in ids(out), what="row 2, from the kept slot")
    finally:
        stop(run)
    text = cdc(config, "checkpoint", "reset", "--help").stdout
    assert "current position" not in text and "slot" in text and "copies" in text, text


# ---- cdc dlq -----------------------------------------------------------------------------


def parked_config(tmp_path: Path) -> Path:
    """A file sink with a file dead-letter queue holding two parked events (no server needed)."""
    from cdc.config import load_config
    from cdc.engine.deadletters import DeadLetterWriter
    from cdc.errors import PermanentSinkError
    from cdc.event import ChangeEvent

    config = tmp_path / "p.yaml"
    config.write_text("""
sources:
  shop: {type: postgres, dsn: "postgresql://x@127.0.0.1:1/x", tables: [orders], checkpoint: {type: memory}}
pipelines:
  orders:
    source: shop
    sinks:
      - {type: file, name: copy, path: out/copy.jsonl, on_error: dead_letter, dead_letter: {type: file, path: dlq.jsonl}}
      - {type: stdout}
""")
    spec = load_config(config).pipelines["orders"].sinks[0]
    writer = DeadLetterWriter(spec.dead_letter.build(), "orders")
    for n in (1, 2):
        writer.park(ChangeEvent(f"0/AB:{n}", "c", None, {"id": n}, {"id": n}, {"table": "orders"}, 5,
                                "public.orders"), "copy", PermanentSinkError("refused"), 1, None)
    writer.close()
    return config


def test_dlq_with_an_unknown_sink_or_id_says_so_and_fails(tmp_path):
    """A mistyped --sink or --id matched nothing: `replayed 0, superseded 0, failed 0`, exit 0,
    and `dlq list --sink` printed `0 dead letter(s)`: as if the queue were empty, or the event
    sent.  Each now names what it did not find and what there is, exit 1."""
    config = parked_config(tmp_path)
    listed = cdc(config, "dlq", "list", "--sink", "cpy")
    assert listed.returncode == 1 and "cpy" in listed.stderr and "copy" in listed.stderr, listed
    replayed = cdc(config, "dlq", "replay", "--sink", "cpy")
    assert replayed.returncode == 1 and "cpy" in replayed.stderr and "copy" in replayed.stderr, replayed
    no_queue = cdc(config, "dlq", "list", "--sink", "orders.sinks[1]:stdout")
    assert no_queue.returncode == 1 and "no dead-letter queue" in no_queue.stderr, no_queue
    replayed = cdc(config, "dlq", "replay", "--id", "0/AB:9")
    assert replayed.returncode == 1 and "0/AB:9" in replayed.stderr and "dlq list" in replayed.stderr, replayed
    assert cdc(config, "dlq", "replay", "--id", "0/AB:1").returncode == 0
    again = cdc(config, "dlq", "replay", "--id", "0/AB:1")  # replayed already: no longer parked
    assert again.returncode == 1 and "0/AB:1" in again.stderr, again
    listed = cdc(config, "dlq", "list", "--sink", "copy")
    assert listed.returncode == 0 and "0/AB:2" in listed.stdout and "0/AB:1" not in listed.stdout
    assert all("Traceback" not in r.stderr for r in (listed, replayed, again, no_queue))
    config.write_text(config.read_text().replace(", on_error: dead_letter, dead_letter: {type: file, path: dlq.jsonl}",
                                                 ""))
    listed = cdc(config, "dlq", "list")
    assert listed.returncode == 0 and "no sink of CONFIG has a dead-letter queue" in listed.stderr, listed


# ---- numbers on the command line -----------------------------------------------------------


@pytest.mark.parametrize("args", [("run", "--grace-period", "-5"), ("demo", "--rate", "0"), ("demo", "--rate", "-1"),
                                  ("demo", "--duration", "-1")])
def test_a_number_option_out_of_range_is_refused_before_anything_starts(tmp_path, args):
    """`cdc run --grace-period -5` ran and drained for "up to -5s" (nothing) at SIGTERM;
    `cdc demo --rate 0` started a PostgreSQL and its writer died with ZeroDivisionError,
    `--rate -1` wrote as fast as it could.  Click refuses them, exit 2, nothing started."""
    config = tmp_path / "p.yaml"
    config.write_text("sources: {}\npipelines: {}\n")
    command = [sys.executable, "-m", "cdc", args[0], *([str(config)] if args[0] == "run" else []), *args[1:]]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2 and args[1] in result.stderr and "Traceback" not in result.stderr, result
    assert "started a throwaway PostgreSQL" not in result.stderr


# ---- cdc snapshot --------------------------------------------------------------------------


def test_a_snapshot_requested_while_stopped_says_when_it_runs(pg_database, tmp_path):
    """`cdc snapshot --table` on a stopped source printed `snapshot ID of T requested`, as on a
    running one: an operator waited for a copy that nothing was making.  It says the copy
    starts with the next `cdc run`, which makes it."""
    make_orders(pg_database)
    insert(pg_database, 1, 3)
    config = basic_config(tmp_path, pg_database)
    out = tmp_path / "out/orders.jsonl"
    run = streaming(config, pg_database)
    try:
        wait_for((tmp_path / "state/shop.json").exists, what="the checkpoint")
        running = cdc(config, "snapshot", "--table", "orders", "--where", "id = 1")
        assert running.returncode == 0 and "not running" not in running.stdout, running
        wait_for(lambda: [e["after"]["id"] for e in read_jsonl(out) if e["op"] == "r"] == [1], what="the copy")
    finally:
        stop(run)
    stopped = cdc(config, "snapshot", "--table", "orders")
    assert stopped.returncode == 0 and "not running" in stopped.stdout and "cdc run" in stopped.stdout, stopped
    run = CdcProcess(config)
    try:
        wait_for(lambda: [e["after"]["id"] for e in read_jsonl(out) if e["op"] == "r"] == [1, 1, 2, 3],
                 what="the copy requested while stopped")
    finally:
        stop(run)


# ---- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize("dsn", ["cdc:hunter2@127.0.0.1:1/shop", "user=cdc password=hunter2 host=127.0.0.1 port=1 x"])
def test_a_dsn_without_its_scheme_never_prints_its_password(tmp_path, dsn):
    """`cdc:hunter2@host/db` (the `postgresql://` forgotten): libpq's error quotes the whole
    string, and every command printed the password in its config error."""
    config = tmp_path / "p.yaml"
    config.write_text(f"""
sources:
  shop: {{type: postgres, dsn: "{dsn}", tables: [orders], checkpoint: {{type: file, path: state/shop.json}}}}
pipelines:
  p: {{source: shop, sinks: [{{type: stdout}}]}}
""")
    for args in (("validate",), ("check",), ("status", "--json"), ("checkpoint", "show"), ("snapshot", "--list")):
        result = cdc(config, *args)
        assert "hunter2" not in result.stdout + result.stderr and "Traceback" not in result.stderr, (args, result)
        assert result.returncode in (1, 2), (args, result)
    run = CdcProcess(config)
    try:
        assert run.wait(60) in (1, 2)
    finally:
        run.stop()
    assert "hunter2" not in run.text(), run.text()


def test_redact_catches_a_password_before_an_at_sign_without_a_scheme():
    from cdc.observe.secrets import redact

    assert redact('missing "=" after "cdc:hunter2@127.0.0.1:5432/shop" in') == \
        'missing "=" after "cdc:***@127.0.0.1:5432/shop" in'
    assert redact("postgresql://cdc:hunter2@db/shop") == "postgresql://cdc:***@db/shop"
    for text in ("at 12:30:45 on 2026-12-01", "mail ann@example.com", "0/1A2B3C8:0", "shop:orders", "a:b @c"):
        assert redact(text) == text


def test_checkpoint_set_with_the_mysql_server_down_or_refusing_says_so(mariadb_database, tmp_path):
    """`cdc checkpoint set` checks the position against the server: with a MariaDB source whose
    server is down (or refuses the password) it died with a pymysql traceback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    host_port = mariadb_database.split("@", 1)[1].split("/", 1)[0]
    for dsn in (mariadb_database.replace(host_port, f"127.0.0.1:{dead_port}"),
                mariadb_database.replace(":root@", ":wrong_password@")):
        config = tmp_path / "p.yaml"
        config.write_text(f"""
sources:
  m: {{type: mysql, dsn: "{dsn}", tables: [orders], checkpoint: {{type: file, path: state/m.json}}}}
pipelines:
  p: {{source: m, sinks: [{{type: stdout}}]}}
""")
        (tmp_path / "state").mkdir(exist_ok=True)
        saved = json.dumps({"source": "m", "position": {"file": "binlog.000001", "pos": 4}, "saved_at": 1})
        (tmp_path / "state/m.json").write_text(saved)
        result = cdc(config, "checkpoint", "set", "--position", '{"file": "binlog.000001", "pos": 100}')
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "nothing was changed" in result.stderr and "root@" not in result.stderr, result.stderr
        assert (tmp_path / "state/m.json").read_text() == saved


def test_checkpoint_reset_drop_slot_with_the_server_down_says_what_was_done(tmp_path):
    """`reset --drop-slot` with PostgreSQL down forgot the position, then failed on the slot
    with only `cannot connect`: the operator did not know the position was gone already nor
    how to finish.  It says the slot is still there and the command that drops it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    config = tmp_path / "p.yaml"
    config.write_text(f"""
sources:
  shop: {{type: postgres, dsn: "postgresql://cdc@127.0.0.1:{dead_port}/shop", tables: [orders], slot: cdc_shop,
         checkpoint: {{type: file, path: state/shop.json}}}}
pipelines:
  p: {{source: shop, sinks: [{{type: stdout}}]}}
""")
    (tmp_path / "state").mkdir()
    (tmp_path / "state/shop.json").write_text(json.dumps({"source": "shop", "position": {"lsn": "0/10"}}))
    result = cdc(config, "checkpoint", "reset", "--yes", "--drop-slot")
    assert result.returncode == 1 and "forgotten" in result.stdout, result
    assert "cdc_shop was not dropped" in result.stderr and "--drop-slot" in result.stderr, result.stderr
    assert not (tmp_path / "state/shop.json").exists()


# ---- cdc run twice -------------------------------------------------------------------------


def test_a_second_cdc_run_of_a_config_with_several_sources_is_refused(tmp_path, pg_server, pg_database):
    """`cdc run CONFIG` typed again while it runs: the second supervisor's children found
    their sources locked, exited 1, and were restarted with backoff for ever (an ERROR every
    30-60 s, never an exit).  It is refused at once, naming the running sources."""
    from test_ops_supervisor import _kill_leftovers, _start

    config, supervisor, pids, first, _ = _start(tmp_path, pg_server, pg_database)
    try:
        second = subprocess.run([sys.executable, "-m", "cdc", "run", str(config)], capture_output=True, text=True,
                                timeout=30, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert second.returncode == 1, second
        assert "source a is running" in second.stderr and "source b is running" in second.stderr, second.stderr
        assert pids() == first  # the first one's children are untouched
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0
    finally:
        supervisor.stop()
        _kill_leftovers(pids())


# ---- a server that accepts connections and never answers -----------------------------------


@pytest.fixture
def silent_server():
    """A port that accepts TCP connections and never sends a byte (a hung or overloaded
    server, a half-open firewall): connection timeouts do not fire."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(50)
    held: list = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_commands_against_a_mysql_server_that_never_answers_give_up(silent_server, tmp_path):
    """`cdc check`, `cdc checkpoint set` and `cdc snapshot --table` against a MariaDB that
    accepts the connection and never answers waited for ever (pymysql has no read timeout
    by default).  They give up after CDC_COMMAND_TIMEOUT seconds, saying so."""
    config = tmp_path / "p.yaml"
    config.write_text(f"""
sources:
  m: {{type: mysql, dsn: "mysql://root:secretpw@127.0.0.1:{silent_server}/shop", tables: [orders],
      checkpoint: {{type: file, path: state/m.json}}}}
pipelines:
  p: {{source: m, sinks: [{{type: stdout}}]}}
""")
    (tmp_path / "state").mkdir()
    saved = json.dumps({"source": "m", "position": {"file": "binlog.000001", "pos": 4}})
    (tmp_path / "state/m.json").write_text(saved)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CDC_COMMAND_TIMEOUT": "3"}
    for args in (["check"], ["checkpoint", "set", "--position", '{"file": "binlog.000001", "pos": 100}'],
                 ["snapshot", "--table", "orders"]):
        words = 2 if args[0] == "checkpoint" else 1
        result = subprocess.run([sys.executable, "-m", "cdc", *args[:words], str(config), *args[words:]],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
        assert result.returncode == 1, (args, result)
        assert "no answer within 3 s" in result.stdout + result.stderr, (args, result)
        assert "Traceback" not in result.stderr and "secretpw" not in result.stdout + result.stderr
    assert (tmp_path / "state/m.json").read_text() == saved
    assert not list((tmp_path / "state").glob("m.snapshots/*"))


def test_dlq_replay_to_a_mysql_mirror_that_never_answers_gives_up(silent_server, tmp_path):
    """`cdc dlq replay` to a MariaDB mirror that accepts the connection and never answers
    waited for ever; it keeps the dead letters and says so."""
    config = parked_config(tmp_path)
    body = config.read_text().replace(
        "{type: file, name: copy, path: out/copy.jsonl,",
        f'{{type: mysql, name: copy, dsn: "mysql://root:secretpw@127.0.0.1:{silent_server}/shop",')
    config.write_text(body)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CDC_COMMAND_TIMEOUT": "3"}
    result = subprocess.run([sys.executable, "-m", "cdc", "dlq", "replay", str(config)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 1 and "no answer within 3 s" in result.stderr, result
    assert "2 dead letter(s) kept" in result.stderr and "secretpw" not in result.stderr
    assert len(read_jsonl(tmp_path / "dlq.jsonl")) == 2


def test_cdc_check_on_a_running_pipeline_says_it_runs(pg_database, tmp_path):
    """`cdc check` while the source runs warned that its slot is in use ("is cdc already
    running?") and ended with "ready to run", although a `cdc run` would be refused.
    It says the source runs, with its pid."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    run = streaming(config, pg_database)
    try:
        wait_for((tmp_path / "state/shop.lock").exists, what="the lock")
        checked = cdc(config, "check")
        assert checked.returncode == 0, checked
        assert f"source shop is running (pid {run.proc.pid})" in checked.stdout, checked.stdout
        assert "ready to run" not in checked.stdout, checked.stdout
    finally:
        stop(run)
    checked = cdc(config, "check")
    assert checked.returncode == 0 and "ready to run" in checked.stdout and "is running" not in checked.stdout


def test_snapshot_options_that_do_not_go_together_and_a_server_down(pg_database, tmp_path):
    """`--list --where x` listed and ignored --where (exit 0), and so did `--cancel ID --where`
    and `--table T --json`; a server that is down exited 2, the code of bad input."""
    make_orders(pg_database)
    config = basic_config(tmp_path, pg_database)
    for args in (["--list", "--where", "id = 1"], ["--cancel", "abc", "--where", "id = 1"],
                 ["--table", "orders", "--json"]):
        proc = cdc(config, "snapshot", *args)
        assert proc.returncode == 2 and ("--where" in proc.stderr or "--json" in proc.stderr), (args, proc)
    down = tmp_path / "down.yaml"
    down.write_text(config.read_text().replace(pg_database, "postgresql://nobody@127.0.0.1:1/nothing"))
    proc = cdc(down, "snapshot", "--table", "orders")
    assert proc.returncode == 1 and "nothing was requested" in proc.stderr, proc
