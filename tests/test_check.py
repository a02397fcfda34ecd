"""``cdc check`` against well-configured and misconfigured PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from _ops_helpers import ROOT, make_orders, slot_name, write_config
from mysql_helpers import preflight
from servers import HOST, MariaDBServer, PostgresServer


def cdc_check(config) -> tuple[int, list[dict]]:
    proc = subprocess.run([sys.executable, "-m", "cdc", "check", str(config), "--json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


CONFIG = """
sources:
  shop:
    type: postgres
    dsn: "{dsn}"
    tables: [orders, audit]
    slot: {slot}
    checkpoint: {type: file, path: state/shop.json}
pipelines:
  copy:
    source: shop
    sinks: [SINK]
"""


def test_check_passes_on_a_ready_postgres(tmp_path, pg_database):
    make_orders(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE audit (at timestamptz, what text)")
        conn.execute("ALTER TABLE audit REPLICA IDENTITY FULL")
    config = write_config(tmp_path, pg_database, CONFIG.replace("SINK", "{type: file, path: out/x.jsonl}"))
    code, findings = cdc_check(config)
    assert code == 0, findings
    # audit's changes are captured (REPLICA IDENTITY FULL), but a snapshot cannot copy a table
    # without a primary key: cdc run's initial copy would drop it with an ERROR
    warnings = [f["message"] for f in findings if f["level"] != "ok"]
    assert len(warnings) == 1 and "public.audit has no primary key" in warnings[0], findings
    assert "existing rows" in warnings[0] and "snapshot: never" in warnings[0], warnings
    never = write_config(tmp_path, pg_database, CONFIG.replace("SINK", "{type: file, path: out/x.jsonl}")
                         .replace("    tables:", "    snapshot: never\n    tables:"))
    code, findings = cdc_check(never)
    assert code == 0 and {f["level"] for f in findings} == {"ok"}, findings


def test_check_warns_about_a_table_the_user_may_not_select(tmp_path, pg_database):
    """cdc check said "ready" when the user could not SELECT a captured table; the initial
    copy then dropped that table with "permission denied" (its rows never delivered)."""
    make_orders(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE audit (id int PRIMARY KEY)")
        role = f"reader_{conn.info.dbname}"  # roles are per server
        conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
        conn.execute(f"GRANT SELECT ON orders TO {role}")
        conn.execute(f"ALTER TABLE orders OWNER TO {role}")  # the publication needs an owner or superuser
    dsn = pg_database.replace("postgres@", f"{role}@")
    config = write_config(tmp_path, dsn, CONFIG.replace("SINK", "{type: file, path: out/x.jsonl}"))
    config.write_text(config.read_text().replace(slot_name(dsn), slot_name(pg_database)))
    code, findings = cdc_check(config)
    denied = [f for f in findings if "may not SELECT" in f["message"]]
    assert [f["level"] for f in denied] == ["warning"] and "public.audit" in denied[0]["message"], findings
    assert "GRANT SELECT ON" in denied[0]["message"], denied


def test_check_warns_that_a_mariadb_table_without_a_primary_key_is_not_copied(mariadb_server):
    with mariadb_server.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS nokey")
        cur.execute("CREATE TABLE IF NOT EXISTS nokey.log (at datetime, what text)")
        cur.execute("CREATE TABLE IF NOT EXISTS nokey.keyed (id int PRIMARY KEY)")
    problems = preflight(mariadb_server.dsn(user="cdc"), tables=["nokey.log", "nokey.keyed"], checkpoint_age=60,
                         position={"file": "binlog.000001", "pos": 4})
    keys = [m for level, m in problems if "primary key" in m]
    assert len(keys) == 1 and "nokey.log has no primary key" in keys[0], keys
    assert all(level == "warning" for level, m in problems if "primary key" in m), problems


@pytest.fixture(scope="module")
def bad_pg():
    with PostgresServer(settings={"wal_level": "replica", "max_replication_slots": "1",
                                  "max_wal_senders": "2"}) as server:
        yield server


def test_check_reports_every_postgres_problem(tmp_path, bad_pg):
    dsn = bad_pg.create_database("shop")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE audit (at timestamptz, what text)")     # no key, no identity
        conn.execute("SELECT pg_create_physical_replication_slot('standby', true)")  # the only slot
        conn.execute("CREATE ROLE app LOGIN")                               # no REPLICATION
        conn.execute("GRANT SELECT ON orders, audit TO app")
        conn.execute("REVOKE CREATE ON DATABASE shop FROM PUBLIC")
    (tmp_path / "blocker").write_text("a file where a directory should be")
    app_dsn = f"postgresql://app@{HOST}:{bad_pg.port}/shop"
    config = write_config(tmp_path, app_dsn, CONFIG.replace("SINK", "{type: file, path: blocker/x.jsonl}"))
    code, findings = cdc_check(config)
    assert code == 1
    errors = "\n".join(f["message"] for f in findings if f["level"] == "error")
    for expected in ("wal_level is 'replica'", "wal_level = logical",
                     "lacks the REPLICATION privilege: ALTER ROLE \"app\" WITH REPLICATION",
                     "public.audit has no primary key and no REPLICA IDENTITY",
                     "max_replication_slots is 1 and all are used",
                     "cannot create publication cdc_shop_shop", "GRANT CREATE ON DATABASE",
                     "unreachable"):
        assert expected in errors, f"{expected!r} not in:\n{errors}"
    sink = [f for f in findings if f["area"].startswith("sink")]
    assert sink and sink[0]["level"] == "error" and "blocker" in sink[0]["message"]


def test_check_mysql_settings_on_a_ready_mariadb(mariadb_server):
    problems = preflight(mariadb_server.dsn(user="cdc"), checkpoint_age=60,
                         position={"file": "binlog.000001", "pos": 4})
    # the test server keeps binlogs for ever: a warning, not a blocker
    assert [level for level, _ in problems] == ["warning"], problems
    assert "never expired" in problems[0][1]


def test_check_mysql_settings_on_a_misconfigured_mariadb():
    settings = {"binlog_format": "STATEMENT", "binlog_row_image": "MINIMAL", "binlog_row_metadata": "MINIMAL",
                "gtid_strict_mode": "OFF", "binlog_expire_logs_seconds": "3600"}
    with MariaDBServer(settings=settings) as server:
        with server.connect() as root, root.cursor() as cur:
            cur.execute("CREATE USER 'weak'@'%' IDENTIFIED BY 's3cret-pw'")
            cur.execute("GRANT SELECT ON *.* TO 'weak'@'%'")
        problems = preflight(f"mysql://weak:s3cret-pw@{HOST}:{server.port}/", checkpoint_age=7200,
                             position={"file": "binlog.000099", "pos": 4})
        # root may list the binlogs: sees that the checkpoint's one is gone
        purged = preflight(server.dsn(), checkpoint_age=60, position={"file": "binlog.000099", "pos": 4})
        # a GTID position resumes from whichever binlog holds it: a purged file loses nothing
        by_gtid = preflight(server.dsn(), checkpoint_age=60,
                            position={"gtid": "0-1-1", "file": "binlog.000099", "pos": 4})
        with MariaDBServer(settings={"log_bin": None}) as nolog:
            no_binlog = preflight(nolog.dsn())
    errors = "\n".join(m for level, m in problems if level == "error")
    for expected in ("binlog_format is 'STATEMENT', must be ROW", "SET GLOBAL binlog_format = 'ROW'",
                     "binlog_row_image is 'MINIMAL', must be FULL", "binlog_row_metadata is 'MINIMAL', must be FULL",
                     "lacks the REPLICATION SLAVE privilege", "lacks the REPLICATION CLIENT privilege",
                     "the checkpoint is 2.0 h old but binlogs are kept 1.0 h"):
        assert expected in errors, f"{expected!r} not in:\n{errors}"
    assert any(level == "error" and "checkpoint's binlog binlog.000099 was purged" in m
               for level, m in purged), purged
    warnings = [m for level, m in problems if level == "warning"]
    assert any("gtid_strict_mode is OFF" in w for w in warnings), warnings
    assert not any("purged" in m for _, m in by_gtid), by_gtid
    assert any(level == "error" and m.startswith("log_bin is 'OFF'") for level, m in no_binlog), no_binlog


def test_check_fails_when_the_slot_of_a_checkpoint_is_gone_or_ahead(tmp_path, pg_database):
    """A checkpoint whose slot was dropped (or re-created later) cannot be resumed without
    losing the changes in between: ``cdc check`` says so as an error, with the way out."""
    make_orders(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE audit (at timestamptz, what text)")
        conn.execute("ALTER TABLE audit REPLICA IDENTITY FULL")
        lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    config = write_config(tmp_path, pg_database, CONFIG.replace("SINK", "{type: file, path: out/x.jsonl}"))
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state/shop.json").write_text(json.dumps({"source": "shop", "position": {"lsn": lsn}}))
    code, findings = cdc_check(config)
    errors = [f["message"] for f in findings if f["level"] == "error"]
    slot = slot_name(pg_database)
    assert code == 1 and any(f"replication slot {slot} does not exist" in e and "cdc checkpoint reset" in e
                             for e in errors), findings
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("INSERT INTO orders VALUES (1, 'moves the WAL on')")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    code, findings = cdc_check(config)
    errors = [f["message"] for f in findings if f["level"] == "error"]
    assert code == 1 and any(f", after the checkpoint at {lsn}" in e for e in errors), findings


def test_check_fix_texts_quote_identifiers(tmp_path, pg_database):
    """The fix a user copies into psql must run as it is, for any table name."""
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "Sales"')
        conn.execute('CREATE TABLE "Sales"."No Key" (at timestamptz)')
    config = write_config(tmp_path, pg_database, CONFIG.replace("tables: [orders, audit]", 'tables: ["Sales.No Key"]')
                          .replace("SINK", "{type: file, path: out/x.jsonl}"))
    code, findings = cdc_check(config)
    errors = [f["message"] for f in findings if f["level"] == "error"]
    assert code == 1 and any('ALTER TABLE "Sales"."No Key" REPLICA IDENTITY FULL' in e for e in errors), findings
    with psycopg.connect(pg_database, autocommit=True) as conn:  # the fix, pasted as it is, works
        fix = next(e for e in errors if "REPLICA IDENTITY" in e).split(" or ", 1)[1]
        conn.execute(fix)
    code, findings = cdc_check(config)
    assert code == 0, findings


def test_check_warns_about_generated_columns(tmp_path, pg_database):
    make_orders(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE audit (id int PRIMARY KEY, n int, twice int GENERATED ALWAYS AS (n * 2) STORED)")
    config = write_config(tmp_path, pg_database, CONFIG.replace("SINK", "{type: file, path: out/x.jsonl}"))
    code, findings = cdc_check(config)
    warnings = [f["message"] for f in findings if f["level"] == "warning"]
    assert code == 0 and any("public.audit has generated columns (twice)" in w for w in warnings), findings


def test_check_warns_about_two_sinks_writing_one_table(tmp_path, pg_database):
    make_orders(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE audit (id int PRIMARY KEY)")
    mirror = f'{{type: postgres, dsn: "{pg_database}"}}'
    text = CONFIG.replace("SINK", mirror) + f"  again:\n    source: shop\n    tables: [orders]\n    sinks: [{mirror}]\n"
    code, findings = cdc_check(write_config(tmp_path, pg_database, text))
    shared = [f for f in findings if "not ordered" in f["message"]]
    assert code == 0 and [f["level"] for f in shared] == ["warning"], findings
    assert shared[0]["area"] == "pipelines.again.sinks[0]" and "table public.orders of" in shared[0]["message"]


@pytest.mark.parametrize("kind", ["postgres", "mariadb"])
def test_check_says_which_target_tables_a_mirror_lacks(kind, tmp_path, pg_database, request):
    """Found by review: cdc check said "ready to run" for a mirror whose target had no table
    for a captured one (or one without a key); cdc run then halted on the first event."""
    make_orders(pg_database)
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE audit (id int PRIMARY KEY)")
    if kind == "postgres":
        target = request.getfixturevalue("pg_server").create_database(f"t_{slot_name(pg_database)[-8:]}")
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id int, status text)")  # no key
        mirror = f'{{type: postgres, dsn: "{target}"}}'
    else:
        target = request.getfixturevalue("mariadb_database")
        db = target.rsplit("/", 1)[1]
        with request.getfixturevalue("mariadb_server").connect(db) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE orders (id int, status text)")
        mirror = f'{{type: mysql, dsn: "{target}"}}'
    code, findings = cdc_check(write_config(tmp_path, pg_database, CONFIG.replace("SINK", mirror)))
    errors = [f["message"] for f in findings if f["level"] == "error"]
    assert code == 1 and len(errors) == 2, findings
    assert "target table orders in" in errors[0] and "no primary key or unique index" in errors[0], errors
    assert "target table audit in" in errors[1] and "does not exist" in errors[1], errors
