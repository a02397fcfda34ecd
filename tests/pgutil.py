"""Helpers for tests that run the engine against a real PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg
import yaml

from cdc.config import parse_config
from cdc.engine import SourceRunner


def sql(dsn: str, *statements: str, params=None) -> list:
    rows = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in statements:
            cur = conn.execute(s, params)
            if cur.description:
                rows.extend(cur.fetchall())
    return rows


def config(tmp_path: Path, dsn: str, tables: list[str], pipelines: dict, checkpoint: dict | None = None,
           **source_options):
    source_options.setdefault("snapshot", "never")  # these tests stream; snapshot tests ask for one
    raw = {"sources": {"db": {"type": "postgres", "dsn": dsn, "tables": tables,
                              "checkpoint": checkpoint or {"type": "file", "path": "state/db.json"},
                              "checkpoint_interval": 0.0, **source_options}},
           "pipelines": pipelines}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    return parse_config(raw, path, {})


def stream_config(tmp_path: Path, dsn: str, tables: list[str], pipelines: dict, checkpoint: dict | None = None,
                  **source_options):
    """``config`` for tests about streaming, saying so: ``snapshot: never`` (``config``'s default
    too), so that rows a test writes while the source starts are not also copied as ``op: "r"``
    events.  Snapshot tests pass ``snapshot="initial"`` to ``config``."""
    return config(tmp_path, dsn, tables, pipelines, checkpoint, **{"snapshot": "never", **source_options})


def file_pipeline(path: str = "out/all.jsonl", tables=None, transforms=None) -> dict:
    p = {"source": "db", "sinks": [{"type": "file", "path": path}]}
    if tables:
        p["tables"] = tables
    if transforms:
        p["transforms"] = transforms
    return p


class Running:
    """A SourceRunner on a thread; ``with Running(cfg) as r:`` waits until it streams."""

    def __init__(self, cfg, source: str = "db") -> None:
        self.runner = SourceRunner(cfg, source, grace_period=10.0)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.runner.run()

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.time() + 30
        while getattr(self.runner.source, "stream", None) is None:
            assert self.thread.is_alive(), f"runner exited: {self.runner.error}"
            assert time.time() < deadline, "source did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> int | None:
        self.runner.request_stop()
        self.thread.join(30)
        return self.code

    def __exit__(self, *exc) -> None:
        self.stop()


def read_jsonl(path: Path) -> list[dict]:
    """A file sink's events; a last line without its newline is still being written (a
    torn line anywhere else raises)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line]


def wait_for_lines(path: Path, count: int, timeout: float = 30.0) -> list[dict]:
    deadline = time.time() + timeout
    while True:
        rows = read_jsonl(path)
        if len(rows) >= count or time.time() > deadline:
            return rows
        time.sleep(0.05)
