"""``cdc status``: per source and pipeline, the position, checkpoint age, lag,
dead-letter count and last error.  Works whether the pipeline runs or not: the
checkpoint store and the database are asked directly, and a running process's
status file (``state_dir/<source>.status.json``) adds its live counters."""

from __future__ import annotations

import time
from typing import Any

from ..abc import Countable, Describable, Timestamped
from ..checkpoints import build_store
from ..config.model import Config
from ..errors import CdcError
from ..snapshot.progress import render as render_snapshots
from ..snapshot.progress import status_rows as snapshot_rows
from .secrets import redact
from .state import SourceLock, read_status

__all__ = ["source_status", "all_status", "render_table"]

STALE_AFTER = 30.0  # a status file older than this, from a process that holds no lock, is history


def source_status(cfg: Config, name: str) -> dict[str, Any]:
    spec = cfg.sources[name]
    row: dict[str, Any] = {"source": name, "type": spec.type}
    lock = SourceLock(cfg.state_dir, name) if cfg.state_dir else None
    row["running"] = bool(lock and lock.held())
    if row["running"]:
        row["pid"] = lock.holder()
    try:
        store = build_store(spec)
        row["position"] = store.load()
        saved_at = store.saved_at() if isinstance(store, Timestamped) else None
        row["checkpoint_age_s"] = round(time.time() - saved_at, 1) if saved_at else None
        store.close()
    except CdcError as exc:
        row["error"] = redact(str(exc))
        return row
    source = spec.build()
    if isinstance(source, Describable):
        try:
            row.update(source.describe())
        except Exception as exc:
            row["error"] = redact(f"{type(exc).__name__}: {exc}".strip())
    live = read_status(cfg.state_dir, name) if cfg.state_dir else None
    if live:
        if row["running"]:
            row["lag_seconds"] = live.get("lag_seconds")
            row["events_in_flight"] = live.get("events_in_flight")
            row["blocked_by"] = live.get("blocked_by") or []
            if row["blocked_by"] and live.get("stalled_since"):
                row["blocked_for_s"] = round(time.time() - live["stalled_since"], 1)
        row["last_error"] = live.get("last_error")
        row["status_updated_s"] = round(time.time() - live.get("updated_at", 0), 1)
    row["pipelines"] = _pipelines(cfg, name, live or {})
    try:
        row["snapshots"] = snapshot_rows(row.get("position"), live)
    except (AttributeError, KeyError, TypeError, ValueError):  # a corrupted status file: the checkpoint's
        row["snapshots"] = snapshot_rows(row.get("position"), None)
    return row


def _pipelines(cfg: Config, name: str, live: dict) -> list[dict]:
    out = []
    sinks_live = live.get("sinks", {})
    for p in cfg.pipelines_of(name):
        counts = live.get("pipelines", {}).get(p.name, {})
        sinks = []
        for s in p.sinks:
            got = sinks_live.get(s.context.name, {})
            entry = {"sink": s.context.name, "type": s.type, "acknowledged": got.get("written"),
                     "last_error": got.get("last_error")}
            count = _dead_letter_count(s)
            if count is None and s.dead_letter is not None and got:
                count = got.get("dead_lettered")
            if count is not None:
                entry["dead_letters"] = count
            sinks.append(entry)
        out.append({"pipeline": p.name, "emitted": counts.get("emitted"),
                    "dropped": counts.get("dropped"), "sinks": sinks})
    return out


def _dead_letter_count(sink_spec) -> int | None:
    """A dead-letter sink with a ``count()`` method says how many events it holds."""
    if sink_spec.dead_letter is None:
        return None
    try:
        dlq = sink_spec.dead_letter.build()
        return int(dlq.count()) if isinstance(dlq, Countable) else None
    except Exception:
        return None


def all_status(cfg: Config) -> list[dict]:
    return [source_status(cfg, name) for name in cfg.sources]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _lag(row: dict) -> str:
    parts = []
    if row.get("lag_bytes") is not None:
        parts.append(f"{row['lag_bytes']:,} B")
    if row.get("lag_seconds") is not None:
        parts.append(f"{row['lag_seconds']:.1f}s")
    return " / ".join(parts) or "-"


def render_table(rows: list[dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    table = Table(title="cdc status", show_lines=True)
    for col in ("source", "state", "position", "checkpoint age", "lag", "pipeline / sink",
                "dead letters", "last error"):
        table.add_column(col, overflow="fold")
    for row in rows:
        state = f"running (pid {row.get('pid')})" if row.get("running") else "stopped"
        for sink in row.get("blocked_by") or []:
            state += f"\nblocked by sink {sink}"
            if row.get("blocked_for_s") is not None:
                state += f" for {_age(row['blocked_for_s'])}"
        position = row.get("position")
        pos = ", ".join(f"{k}={v}" for k, v in position.items() if k != "snapshot") if position else "none"
        lines, dead = [], []
        for p in row.get("pipelines", []):
            lines.append(p["pipeline"])
            dead.append("")
            for s in p["sinks"]:
                lines.append(f"  {s['sink']}")
                dead.append(str(s["dead_letters"]) if "dead_letters" in s else "-")
        error = row.get("error") or row.get("last_error") or ""
        table.add_row(f"{row['source']} ({row['type']})", state, pos, _age(row.get("checkpoint_age_s")),
                      _lag(row), "\n".join(lines), "\n".join(dead), error)
    (console or Console()).print(table)
    render_snapshots(rows, console)
