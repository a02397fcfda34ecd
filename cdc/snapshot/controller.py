"""The snapshot side of a ``SourceRunner``: which tables to copy, one chunk window at
a time, and the copy's progress in the checkpoint position.

The runner calls, on its own thread:

- ``plan(position)`` once, with the loaded checkpoint;
- ``process(items)`` on every polled batch (a no-op when no copy is running):
  it drops buffered rows that a newer streamed change supersedes, and inserts the
  chunk's rows after the commit that reaches the chunk's watermark;
- ``annotate(position)`` on the batch's last commit position: adds ``snapshot``;
- ``tick(...)`` after each turn: may read the next chunk, and returns items to
  dispatch when a chunk can be emitted at once;
- ``discard_window()`` when the source reconnects.

The algorithm and why it is correct: ``docs/snapshots.md``.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..abc import ReadsByBytes
from ..errors import CdcError, SourceConnectionError
from ..event import ChangeEvent, Commit
from . import requests as signals
from .chunk import Chunk, SnapshotInputError, TableLocked, copy_again

__all__ = ["SnapshotController", "INITIAL", "POSITION_KEY"]

log = logging.getLogger("cdc.snapshot")
INITIAL = "initial"
POSITION_KEY = "snapshot"  # the copy's progress, saved beside the log position in a checkpoint
RETRY_DELAY = 0.2          # seconds before reading a chunk again whose snapshot could not be used
ERROR_DELAY = 5.0          # seconds before reconnecting the snapshot reader after a lost connection,
MAX_ERROR_DELAY = 60.0     # doubled after each failure in a row up to this
LOCKED_DELAY = 5.0         # seconds before a copy whose table was locked tries again, doubled up to MAX_ERROR_DELAY
ESCALATE_AFTER = 300.0     # seconds of failures in a row after which each one is an ERROR, not a WARNING
REQUEST_POLL = 1.0         # seconds between looks at the request directory
NOT_COPIED_NEVER = "snapshot: never"  # why a table has no initial copy (cdc status: "not copied: ...")


@dataclass
class _Window:
    entry: dict
    chunk: Chunk
    superseded: set = field(default_factory=set)   # keys a newer streamed change has: not emitted
    truncated: bool = False                         # a newer truncate: no row is emitted
    opened: float = field(default_factory=time.monotonic)


class SnapshotController:
    def __init__(self, source_name: str, source, mode: str, tables: list[str], chunk_size: int,
                 state_dir: Path | None = None, parallelism: int = 1, max_bytes: int | None = None) -> None:
        self.name = source_name
        self.source = source
        self.mode = mode
        self.tables = list(tables)
        self.chunk_size = max(1, int(chunk_size))
        # A chunk's bytes: half of max_in_flight_bytes, shared by the chunks open at once.  A
        # chunk is cut there, and the table's next chunks hold as many rows as fit (row_bytes).
        self.chunk_bytes = max(1, max_bytes // (2 * max(1, int(parallelism)))) if max_bytes else None
        self.row_bytes: dict[str, float] = {}  # table -> bytes per row of its last chunk read
        self.bytes_emitted = 0                 # the bytes of the rows handed on (max_in_flight_bytes)
        self._told_wide: set[str] = set()      # tables whose narrower chunks were logged
        self._estimated: set[str] = set()      # tables whose bytes per row the statistics were asked for
        self.state_dir = state_dir
        self.done: list[str] = []            # tables whose initial copy is done (or needs none)
        self.skipped: dict[str, str] = {}    # tables of ``done`` not copied: why (refused, cancelled)
        self.queue: list[dict] = []          # copies to do, the first one in progress
        self.parallelism = max(1, int(parallelism))
        self.windows: list[_Window] = []     # chunks read, waiting for their watermark, in read order
        self.reader: Any = None              # the source's SnapshotReader, opened on the first chunk
        self.pending: frozenset[str] = frozenset()   # tables of the queued copies
        self.rows_total = 0                  # snapshot rows emitted by this process
        self.progress: dict[str, dict] = {}  # copy id:table -> rows, total, started, finished
        self._state: dict = {}
        self._not_before = 0.0
        self._next_request_look = 0.0
        self._chunks_retried = 0
        self._locked: dict[str, tuple[float, float, float]] = {}  # copy uid -> (not before, delay, since)
        self._failures = 0                   # reader failures in a row (SourceConnectionError)
        self._failing_since = 0.0            # time.monotonic() of the first of them
        self._unsaved = False                # the copies changed since the last commit handed on
        self.chunks_read = 0
        self.chunks_emitted = 0              # chunks whose rows were handed on (the crash point)

    # ---- planning ---------------------------------------------------------------

    def plan(self, position: dict | None) -> None:
        """Decide what to copy from the loaded checkpoint (None: a new source)."""
        copy = self.mode != "never"
        saved = (position or {}).get(POSITION_KEY)
        self.progress.clear()  # planned again (when_needed starting over): the new copies' progress
        self.skipped = {t: why for t, why in ((saved or {}).get("skipped") or {}).items() if t in self.tables} \
            if position is not None else {}
        if position is None:
            self.done = [] if copy else list(self.tables)
            self.queue = [self._entry(INITIAL, t) for t in self.tables] if copy else []
            if not copy:  # done means "needs no copy": say why it has none
                self.skipped = {t: NOT_COPIED_NEVER for t in self.tables}
        elif saved is None:  # a checkpoint from before snapshots: its tables were streamed already
            self.done, self.queue = list(self.tables), []
        else:
            self.done = [t for t in saved.get("tables", []) if t in self.tables]
            self.queue = [dict(e) for e in saved.get("queue", []) if e.get("table") in self.tables]
            for e in self.queue:  # a copy started before copies had an identity
                e.setdefault("uid", secrets.token_hex(6))
            queued = {e["table"] for e in self.queue if e["id"] == INITIAL}
            for t in self.tables:  # a table added to ``tables:`` since the last run
                if t not in self.done and t not in queued:
                    if copy:
                        log.info("source %s: table %s is new: it gets its own snapshot", self.name, t)
                        self.queue.append(self._entry(INITIAL, t))
                    else:
                        self.done.append(t)
                        self.skipped[t] = NOT_COPIED_NEVER
        self._changed()
        for e in self.queue:
            what = "resuming after key %s" % (e["after"],) if e["after"] is not None else "from the start"
            log.info("source %s: snapshot %s of %s %s", self.name, e["id"], e["table"], what)
        self._retake({e["id"] for e in (saved or {}).get("queue", [])} if position is not None else None)

    def _retake(self, saved: set[str] | None) -> None:
        """Requests and cancels taken by a process that stopped before its checkpoint held them."""
        if self.state_dir is None:
            return
        try:
            back = signals.retake(self.state_dir, self.name, saved)
        except OSError as exc:
            log.warning("source %s: cannot read snapshot requests: %s", self.name, exc)
            return
        for snapshot_id, kind in back:
            log.info("source %s: the %s of snapshot %s was taken by a process that stopped before its checkpoint"
                     " held it: taken again", self.name, kind, snapshot_id)

    def _ended(self, entry: dict) -> None:
        """A copy ended (finished, cancelled, dropped): its request file goes."""
        if self.state_dir is None or entry["id"] == INITIAL:
            return
        try:
            signals.ended(self.state_dir, self.name, entry["id"])
        except OSError as exc:
            log.warning("source %s: cannot remove the request of snapshot %s: %s", self.name, entry["id"], exc)

    @staticmethod
    def _entry(snapshot_id: str, table: str, where: str | None = None) -> dict:
        # uid: this copy's identity, part of its rows' ids (cdc.snapshot.chunk.emit_events)
        return {"id": snapshot_id, "table": table, "after": None, "rows": 0, "where": where,
                "uid": secrets.token_hex(6)}

    def _changed(self) -> None:
        self._state = {"tables": list(self.done), "queue": [dict(e) for e in self.queue]}
        if self.skipped:
            self._state["skipped"] = dict(self.skipped)
        self.pending = frozenset(e["table"] for e in self.queue)

    @property
    def state(self) -> dict:
        return self._state

    @property
    def window(self) -> _Window | None:
        """The oldest open chunk (None: none is open)."""
        return self.windows[0] if self.windows else None

    @property
    def ready(self) -> bool:
        """A chunk is to be read: the runner should not wait in ``poll``."""
        return (len(self.windows) < self.parallelism and self._next_entry() is not None
                and time.monotonic() >= self._not_before)

    def _next_entry(self) -> tuple[dict, list | None] | None:
        """The copy and the key to read the next chunk after: the open chunks come first; a
        copy whose table is locked waits (``TableLocked``) while the others go on."""
        last = self.windows[-1] if self.windows else None
        now = time.monotonic()
        for entry in self.queue:
            if entry["uid"] in self._locked and self._locked[entry["uid"]][0] > now:
                continue
            if last is not None and last.entry is entry:
                if last.chunk.done:
                    last = None  # this copy has been read to its end: the next one
                    continue
                return entry, last.chunk.last_key
            if last is not None and any(w.entry is entry for w in self.windows):
                continue
            return entry, entry["after"]
        return None

    @property
    def finished(self) -> bool:
        return not self.queue

    def annotate(self, position: dict) -> dict:
        """The checkpoint position with the copy's progress, as of the end of the batch."""
        return {**position, POSITION_KEY: self._state}

    # ---- the stream side ------------------------------------------------------------

    def process(self, items: list) -> list:
        pending = self.pending
        if not pending:
            return items
        windows = self.windows
        reader = self.reader
        out: list = []
        append = out.append
        for item in items:
            if item.__class__ is Commit:
                append(item)
                while windows and reader.reached(item.position, windows[0].chunk.watermark):
                    out.extend(self._emit(item.position))
                continue
            if item.table in pending:
                if reader is not None:
                    reader.note(item)
                for window in windows:
                    if item.table == window.chunk.table and reader.newer(item, window.chunk.watermark):
                        self._supersede(window, item)
            append(item)
        return out

    @staticmethod
    def _supersede(window: _Window, event: ChangeEvent) -> None:
        """A newer change of the chunk's table: its keys' snapshot rows are not emitted."""
        columns = window.chunk.key_columns
        if event.key is None:  # truncate: the rows read are all gone
            window.truncated = True
            return
        keys = window.superseded
        try:
            keys.add(tuple(event.key[c] for c in columns))
        except KeyError:
            pass
        before = event.before
        if before:
            try:
                keys.add(tuple(before[c] for c in columns))
            except KeyError:
                pass

    def _emit(self, position: dict) -> list:
        window = self.windows.pop(0)
        chunk, entry = window.chunk, window.entry
        superseded = window.superseded
        rows = ([] if window.truncated else
                [kr for kr in chunk.rows if kr[0] not in superseded] if superseded else chunk.rows)
        chunk.first_index = entry["rows"]
        chunk.copy_uid = entry["uid"]
        events = self.reader.events(chunk, rows, position, chunk.done) if rows else []
        self.chunks_emitted += 1
        self.bytes_emitted += chunk.nbytes
        entry["after"] = chunk.last_key
        entry["rows"] += len(events)
        self.rows_total += len(events)
        progress = self.progress.get(f"{entry['id']}:{entry['table']}")
        if progress is not None:
            progress["rows"] = entry["rows"]
        if chunk.done:
            self._finish(entry)
        self._changed()
        return events + [Commit(position)]

    def _finish(self, entry: dict) -> None:
        self.queue.remove(entry)
        self._ended(entry)
        if not entry.get("where"):  # the whole table is copied now
            self.skipped.pop(entry["table"], None)
        if entry["id"] == INITIAL and entry["table"] not in self.done:
            self.done.append(entry["table"])
        progress = self.progress.get(f"{entry['id']}:{entry['table']}")
        if progress is not None:
            progress["finished"] = time.time()
            seconds = max(progress["finished"] - progress["started"], 1e-6)
            log.info("source %s: snapshot %s of %s done: %d rows, %d of them in %.1fs here (%.0f rows/s)",
                     self.name, entry["id"], entry["table"], entry["rows"], entry["rows"] - progress["rows_start"],
                     seconds, (entry["rows"] - progress["rows_start"]) / seconds)

    def discard_window(self) -> None:
        """The source reconnected: read the open chunks again later."""
        self.windows.clear()

    # ---- the reading side -------------------------------------------------------------

    def tick(self, room: bool, in_tx: bool) -> list:
        """Read the next chunk when nothing is open and the sinks have room; items to
        dispatch now (a chunk that can be placed at once, or the end of a copy), and a
        commit that carries a change of the copies made without one (a request taken, a
        copy cancelled or dropped) into the checkpoint, also when the database is idle."""
        items = self._tick(room, in_tx)
        if self._unsaved and not in_tx:
            if not any(item.__class__ is Commit for item in items):
                position = self.source.snapshot_position()
                if position is None:  # nothing read yet: the next commit carries it
                    return items
                items.append(Commit(position))
            self._unsaved = False
        return items

    def _tick(self, room: bool, in_tx: bool) -> list:
        now = time.monotonic()
        if self.state_dir is not None and now >= self._next_request_look:
            self._next_request_look = now + REQUEST_POLL
            self._look_at_requests()
        nxt = self._next_entry() if len(self.windows) < self.parallelism else None
        if nxt is None or not room or in_tx or now < self._not_before:
            if self.windows and not in_tx:
                return self._emit_reached(self.source.snapshot_position())
            return []
        entry, after = nxt
        key = f"{entry['id']}:{entry['table']}"
        try:
            reader = self._reader()
            if key not in self.progress:
                self.progress[key] = {"id": entry["id"], "table": entry["table"], "rows": entry["rows"],
                                      "rows_start": entry["rows"],
                                      # with a condition, how many rows match is not known
                                      "total": None if entry.get("where") else reader.estimate(entry["table"]),
                                      "started": time.time(),
                                      "finished": None, "resumed_after": entry["after"]}
            table = entry["table"]
            if isinstance(reader, ReadsByBytes) and self.chunk_bytes is not None:
                if table not in self._estimated:  # the first chunk: sized by the server's statistics
                    self._estimated.add(table)
                    estimate = reader.row_bytes(table)
                    if estimate and table not in self.row_bytes:
                        self.row_bytes[table] = estimate
                chunk = reader.read_chunk(table, after, self._limit(table), entry.get("where"), self.chunk_bytes)
            else:
                chunk = reader.read_chunk(table, after, self.chunk_size, entry.get("where"))
        except SnapshotInputError as exc:
            # mid-copy (e.g. the table renamed or dropped): what is missing, and the way back
            self._failures = 0  # the server answered, with a refusal or an error of the table
            again = copy_again(self.name, entry["table"], entry.get("where"))
            lost = ""
            if "cdc snapshot CONFIG" in str(exc):
                pass
            elif entry["after"] is not None:
                lost = (f"; its rows after key {entry['after']} are not copied (those before were); once the table"
                        f" can be read, copy it again: {again}")
            else:  # at its start (e.g. a table without a primary key), an initial or a requested copy
                lost = f"; its existing rows are not copied, its changes are still streamed; once it can be copied: {again}"
            log.error("source %s: snapshot %s of %s dropped: %s%s", self.name, entry["id"], entry["table"],
                      self._detail(exc), lost)
            self.windows = [w for w in self.windows if w.entry is not entry]
            self.queue.remove(entry)
            self._ended(entry)
            if entry["id"] == INITIAL and entry["table"] not in self.done:
                self.done.append(entry["table"])
                self.skipped[entry["table"]] = self._detail(exc)
            self._changed()
            self._unsaved = True
            return []
        except TableLocked as exc:
            _, delay, since = self._locked.get(entry["uid"], (0.0, LOCKED_DELAY / 2, now))
            delay = min(delay * 2, MAX_ERROR_DELAY)
            self._locked[entry["uid"]] = (now + delay, delay, since)
            others = " (the copies of the other tables go on)" if len(self.queue) > 1 else ""
            locked = f"locked for {now - since:.0f}s now" if now > since else "locked"
            log.warning("source %s: snapshot %s of %s: %s; %s: the stream goes on%s; this copy tries again in %.0fs",
                        self.name, entry["id"], entry["table"], self._detail(exc), locked, others, delay)
            return []
        except SourceConnectionError as exc:
            self._failed(entry, exc, now)
            return []
        self._recovered(entry)
        if self._locked.pop(entry["uid"], None) is not None:
            log.info("source %s: snapshot %s of %s: the table is not locked any more: the copy goes on",
                     self.name, entry["id"], entry["table"])
        if chunk is None:  # the snapshot could not be used: read again a moment later
            self._chunks_retried += 1
            self._not_before = now + RETRY_DELAY
            return []
        self.windows.append(_Window(entry, chunk))
        self.chunks_read += 1
        if chunk.rows and chunk.nbytes:
            table = entry["table"]
            self.row_bytes[table] = chunk.nbytes / len(chunk.rows)
            if self._limit(table) < self.chunk_size and table not in self._told_wide:
                self._told_wide.add(table)
                log.info("source %s: rows of %s take %.0f kB each: its chunks hold %d rows (half of"
                         " max_in_flight_bytes, shared by the chunks open at once), not snapshot_chunk_size",
                         self.name, table, self.row_bytes[table] / 1000, self._limit(table))
        log.debug("source %s: chunk of %s after %s: %d rows", self.name, entry["table"], after, len(chunk.rows))
        return self._emit_reached(self.source.snapshot_position())

    def _limit(self, table: str) -> int:
        """The rows of the table's next chunk: ``snapshot_chunk_size``, or fewer when that many
        of the rows its last chunk measured would pass ``chunk_bytes``."""
        per_row = self.row_bytes.get(table)
        if per_row is None or self.chunk_bytes is None:
            return self.chunk_size
        return max(1, min(self.chunk_size, int(self.chunk_bytes / per_row)))

    def _detail(self, exc: BaseException) -> str:
        """The error's text without the ``source NAME:`` its class puts first (the log line has it)."""
        text = str(exc)
        prefix = f"source {self.name}: "
        return text[len(prefix):] if text.startswith(prefix) else text

    def _failed(self, entry: dict, exc: SourceConnectionError, now: float) -> None:
        """The reader failed in a way that may pass: retried, ever later (up to MAX_ERROR_DELAY);
        each line says how many times and for how long; past ESCALATE_AFTER, as an ERROR."""
        if not self._failures:
            self._failing_since = now
        self._failures += 1
        delay = min(ERROR_DELAY * 2 ** (self._failures - 1), MAX_ERROR_DELAY)
        failing = now - self._failing_since
        level = logging.ERROR if failing >= ESCALATE_AFTER else logging.WARNING
        since = f"; failed {self._failures} times in a row over {failing:.0f}s" if self._failures > 1 else ""
        log.log(level, "source %s: snapshot %s of %s: %s%s (the stream goes on; the copy waits); retrying in %.0fs",
                self.name, entry["id"], entry["table"], self._detail(exc), since, delay)
        self._close_reader()
        self._not_before = now + delay

    def _recovered(self, entry: dict) -> None:
        if self._failures:
            log.warning("source %s: snapshot %s of %s: the snapshot reader works again after %d failures over %.0fs",
                        self.name, entry["id"], entry["table"], self._failures,
                        time.monotonic() - self._failing_since)
            self._failures = 0

    def _emit_reached(self, position: dict | None) -> list:
        """The open chunks whose watermark the stream has passed at ``position``."""
        out: list = []
        while position is not None and self.windows and self.reader.reached(position, self.windows[0].chunk.watermark):
            out.extend(self._emit(position))
        return out

    def _reader(self):
        if self.reader is None:
            self.reader = self.source.snapshot_reader()
        return self.reader

    def _close_reader(self) -> None:
        if self.reader is not None:
            try:
                self.reader.close()
            except Exception:
                pass
            self.reader = None
        self.windows.clear()

    def close(self) -> None:
        self._close_reader()

    # ---- on-demand snapshots --------------------------------------------------------

    def _look_at_requests(self) -> None:
        assert self.state_dir is not None  # looked at only when there is one
        try:
            requests, cancels = signals.take(self.state_dir, self.name)
        except OSError as exc:
            log.warning("source %s: cannot read snapshot requests: %s", self.name, exc)
            return
        changed = False
        for req in requests:
            table = req.get("table")
            if table not in self.tables:
                log.error("source %s: snapshot request %s: %s is not a table of this source",
                          self.name, req.get("id"), table)
                self._ended(req)
                continue
            log.info("source %s: snapshot %s of %s requested%s", self.name, req["id"], table,
                     f" where {req['where']}" if req.get("where") else "")
            self.queue.append(self._entry(req["id"], table, req.get("where")))
            changed = True
        for cancel_id in cancels:
            if not any(e["id"] == cancel_id for e in self.queue):
                log.warning("source %s: cancel of snapshot %s: no such copy is queued or running", self.name,
                            cancel_id)
            for e in [e for e in self.queue if e["id"] == cancel_id]:
                log.info("source %s: snapshot %s of %s cancelled after %d rows", self.name, e["id"],
                         e["table"], e["rows"])
                self.windows = [w for w in self.windows if w.entry is not e]
                self.queue.remove(e)
                self._ended(e)
                if e["id"] == INITIAL and e["table"] not in self.done:
                    self.done.append(e["table"])  # not copied again at the next start
                    self.skipped[e["table"]] = f"initial copy cancelled after {e['rows']} rows"
                changed = True
        if changed:
            self._changed()
            self._unsaved = True

    # ---- observation --------------------------------------------------------------------

    def figures(self) -> dict:
        """For ``cdc status``, the metrics and the progress bar."""
        return {"rows_total": self.rows_total, "tables_remaining": len({e["table"] for e in self.queue}),
                "queue": [dict(e) for e in self.queue], "tables": [dict(p) for p in self.progress.values()],
                "chunks_retried": self._chunks_retried}


def check_mode(mode: str) -> None:
    from .chunk import MODES
    if mode not in MODES:
        raise CdcError(f"snapshot must be one of {', '.join(MODES)} (got {mode!r})")
