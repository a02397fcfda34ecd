"""Snapshot progress for people and machines: the status file's ``snapshot`` block,
the per-table progress bar of ``cdc run`` (rich, on a terminal), and the rows of
``cdc status``."""

from __future__ import annotations

import os
import sys
import time

__all__ = ["status_of", "ProgressBars", "status_rows", "render", "alive"]


def alive(live: dict | None) -> dict | None:
    """A status file of a process that still runs (None: none, or one left behind by a
    process that stopped or was killed: the checkpoint is then what counts)."""
    if not live or not live.get("running"):
        return None
    try:
        os.kill(int(live["pid"]), 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return None
    except PermissionError:  # another user's process
        pass
    return live


def status_of(runner) -> dict | None:
    """The ``snapshot`` block of the status file (None: the source takes no snapshots)."""
    c = runner.snapshots
    if c is None:
        return None
    out = c.figures()
    out["state"] = c.state
    now = time.time()
    for t in out["tables"]:
        end = t["finished"] or now
        done_here = t["rows"] - t["rows_start"]
        t["rows_per_s"] = round(done_here / max(end - t["started"], 1e-6), 1)
        left = (t["total"] - t["rows"]) if t["total"] else None
        t["eta_s"] = round(left / t["rows_per_s"], 1) if left and left > 0 and t["rows_per_s"] and not t["finished"] \
            else None
    return out


class ProgressBars:
    """``runner.on_tick`` observer: one rich progress bar per table being copied, with
    rows done, rows/s and an estimate of the time left.  Only on a terminal.  The
    display stops (its last lines stay) when no copy is queued or running, so that a
    pipeline that streams for days does not redraw it ten times a second; a new copy
    (``cdc snapshot``) starts another."""

    def __init__(self, runner, stream=None) -> None:
        self.runner = runner
        self.stream = stream or sys.stderr
        self.progress = self._new()
        self.tasks: dict[str, int] = {}
        self.shown: set[str] = set()   # copies shown to their end by a display that stopped
        self._last = 0.0
        self._started = False

    def _new(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} rows/s"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=Console(file=self.stream), transient=False)

    @staticmethod
    def wanted(stream=None) -> bool:
        return (stream or sys.stderr).isatty()

    @property
    def showing(self) -> bool:
        return self._started

    def __call__(self, runner) -> None:
        now = time.monotonic()
        if now - self._last < 0.5:
            return
        self._last = now
        status = status_of(self.runner)
        if not status:
            return
        for t in status["tables"]:
            key = f"{t['id']}:{t['table']}:{t['started']}"  # a copy started over (when_needed) is another
            if key in self.shown:
                continue
            if key not in self.tasks:
                if not self._started:
                    self.progress.start()
                    self._started = True
                self.tasks[key] = self.progress.add_task(f"snapshot {t['table']}", total=t["total"], rate="-")
            total = t["total"] if t["total"] and t["total"] >= t["rows"] else None
            if t["finished"]:
                total = t["rows"]
            self.progress.update(self.tasks[key], completed=t["rows"], total=total,
                                 rate=f"{t['rows_per_s']:,.0f}")
        if self._started and not status["queue"]:  # every copy ended: leave the last lines, stop redrawing
            self.close()
            self.shown.update(self.tasks)
            self.tasks.clear()
            self.progress = self._new()

    def close(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False


def status_rows(position: dict | None, live: dict | None) -> list[dict]:
    """For ``cdc status``: one row per table copy, from the running process's status
    (rows/s, estimate) or else from the checkpoint."""
    running = alive(live)
    stopped = bool(live) and running is None  # a status file left behind: the copy waits for a start
    live = running or {}
    block = live.get("snapshot") or {}
    state = block.get("state") or (position or {}).get("snapshot") or {}
    figures = {f"{t['id']}:{t['table']}": t for t in block.get("tables", [])}
    rows = []
    for i, e in enumerate(state.get("queue", [])):
        f = figures.get(f"{e['id']}:{e['table']}", {})
        head = ("to resume" if stopped else "copying") if i == 0 else "queued"
        rows.append({"id": e["id"], "table": e["table"], "state": head,
                     "rows": e.get("rows", 0), "total": f.get("total"), "rows_per_s": f.get("rows_per_s"),
                     "eta_s": f.get("eta_s"), "after": e.get("after")})
    skipped = state.get("skipped") or {}
    for t in state.get("tables", []):
        rows.append({"id": "initial", "table": t, "state": "not copied", "error": skipped[t]} if t in skipped
                    else {"id": "initial", "table": t, "state": "done"})
    return rows


def render(rows: list[dict], console=None) -> None:
    from rich.console import Console
    from rich.table import Table
    have = [r for r in rows if r.get("snapshots")]
    if not have:
        return
    table = Table(title="snapshots")
    for col in ("source", "copy", "table", "state", "rows", "rows/s", "time left"):
        table.add_column(col)
    for r in have:
        for s in r["snapshots"]:
            total = f" / ~{s['total']:,}" if s.get("total") else ""
            state = f"{s['state']}: {s['error'].splitlines()[0]}" if s.get("error") else s["state"]
            table.add_row(r["source"], s["id"], s["table"], state,
                          f"{s['rows']:,}{total}" if "rows" in s else "-",
                          f"{s['rows_per_s']:,.0f}" if s.get("rows_per_s") else "-",
                          f"{s['eta_s']:.0f}s" if s.get("eta_s") else "-")
    (console or Console()).print(table)
