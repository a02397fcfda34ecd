"""Shared helpers of the tests/test_mysql_*.py files."""

from __future__ import annotations

import random
import time

import yaml

from cdc.config import Context, parse_config
from cdc.event import ChangeEvent, Commit
from cdc.sources.mysql import MySQLSource

__all__ = ["make_source", "collect", "db_of", "execute", "preflight", "mysql_config"]


def db_of(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


def make_source(server, db: str, tables: list[str], name: str = "legacy", **options) -> MySQLSource:
    """A MySQLSource reading as the replication user ``cdc``."""
    options.setdefault("server_id", 4201)
    return MySQLSource(dsn=server.dsn(db, user="cdc"), tables=tables,
                       context=Context(config_dir=None, source=name, name=name), **options)


def preflight(dsn: str, tables: list[str] = (), position: dict | None = None,
              checkpoint_age: float | None = None) -> list[tuple[str, str]]:
    """What ``cdc check`` reports for a MySQL source with this DSN."""
    source = MySQLSource(dsn=dsn, tables=list(tables), server_id=4299,
                         context=Context(config_dir=None, source="check", name="check"))
    return source.preflight(position, checkpoint_age)


def execute(server, db: str, *statements: str, sql_mode: str | None = None) -> None:
    with server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        if sql_mode is not None:
            cur.execute("SET sql_mode = %s", (sql_mode,))
        for statement in statements:
            cur.execute(statement)


def collect(source, count: int, timeout: float = 60.0, commits: list | None = None) -> list[ChangeEvent]:
    """Poll until ``count`` change events arrived (and the commit after the last one)."""
    events: list[ChangeEvent] = []
    deadline = time.monotonic() + timeout
    last_commit = False
    while (len(events) < count or not last_commit) and time.monotonic() < deadline:
        for item in source.poll(0.2):
            if isinstance(item, Commit):
                last_commit = True
                if commits is not None:
                    commits.append(item)
            else:
                events.append(item)
                last_commit = False
    assert len(events) >= count, f"got {len(events)} of {count} events"
    return events


def mysql_config(tmp_path, dsn: str, tables: list[str], **options):
    """A config of one MySQL source ``db`` (a random server_id, a file checkpoint saved at every
    commit) into a file sink, written to ``tmp_path`` and parsed."""
    raw = {"sources": {"db": {"type": "mysql", "dsn": dsn, "tables": tables,
                              "server_id": random.randint(5000, 90000),
                              "checkpoint": {"type": "file", "path": "state/db.json"},
                              "checkpoint_interval": 0.0, **options}},
           "pipelines": {"all": {"source": "db", "sinks": [{"type": "file", "path": "out/all.jsonl"}]}}}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    return parse_config(raw, path, {})
