"""Shared fixtures: throwaway servers, started on first use and stopped at session end.

A skipped test fails the run: every test that needs a server starts one.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from hypothesis import settings

from servers import KafkaServer, MariaDBServer, PostgresServer, RabbitMQServer, RedisServer

# hypothesis (tests/test_fuzz_*.py): a failure prints the example and the blob that replays it
# (@reproduce_failure); `--hypothesis-seed N` fixes the seed of a whole run.
settings.register_profile("cdc", print_blob=True)
settings.load_profile("cdc")


def pytest_addoption(parser):
    group = parser.getgroup("cdc chaos", "tests/chaos: SIGKILLs, outages and operator faults")
    group.addoption("--chaos-seed", type=int, default=None,
                    help="seed of every random choice of tests/chaos (printed by each run): replays a run")
    group.addoption("--long", action="store_true", default=False,
                    help="tests/chaos in release-check size: 1,000,000 changes and 500 kills (about an hour)")


def _serve(server):
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def pg_server():
    yield from _serve(PostgresServer())


@pytest.fixture(scope="session")
def mariadb_server():
    yield from _serve(MariaDBServer())


@pytest.fixture(scope="session")
def kafka_server():
    yield from _serve(KafkaServer())


@pytest.fixture(scope="session")
def rabbitmq_server():
    yield from _serve(RabbitMQServer())


@pytest.fixture(scope="session")
def redis_server():
    yield from _serve(RedisServer())


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pg_database(pg_server):
    """DSN of a fresh, empty database on the shared PostgreSQL server; its replication
    slots are dropped afterwards (slots are per server, and the server has a limit)."""
    import psycopg

    name = unique_name()
    yield pg_server.create_database(name)
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                     " WHERE database = %s AND active", (name,))
        for _ in range(50):
            slots = conn.execute("SELECT slot_name, active FROM pg_replication_slots WHERE database = %s",
                                 (name,)).fetchall()
            if not any(active for _, active in slots):
                break
            time.sleep(0.1)
        for slot, _ in slots:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))


@pytest.fixture
def mariadb_database(mariadb_server) -> str:
    """DSN (root user) of a fresh, empty database on the shared MariaDB server."""
    return mariadb_server.create_database(unique_name())


def pytest_collection_modifyitems(config, items):
    """Every test not marked ``unit`` is an integration test (it starts a real server)."""
    for item in items:
        if item.get_closest_marker("unit") is None:
            item.add_marker(pytest.mark.integration)


def _skipped(config) -> int:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return len(reporter.stats.get("skipped", [])) if reporter else 0


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _skipped(config):
        terminalreporter.write_line(
            f"FAILED: {_skipped(config)} test(s) skipped; skips are not allowed", red=True, bold=True)


def pytest_sessionfinish(session, exitstatus):
    if _skipped(session.config) and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def small_disk(tmp_path):
    """A really full disk for the tests: a 64 KiB tmpfs (mounting needs root, as CI runs),
    unmounted lazily afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
