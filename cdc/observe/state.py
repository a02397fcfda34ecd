"""Per-source files in ``state_dir``: the run lock and the status file.

``<source>.lock`` is held (``flock``) by the ``cdc run`` process of that source for its
whole life, and holds its pid; the kernel drops it if the process dies, even by
``kill -9``.  ``<source>.status.json`` is rewritten by the running process every few
seconds (counters, lag, last error) so ``cdc status`` can show it while it runs and
after it stopped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path

from ..snapshot.progress import status_of as snapshot_status
from .secrets import redact

__all__ = ["SourceLock", "LockHeld", "StatusWriter", "read_status", "lock_path", "status_path"]

STATUS_INTERVAL = 2.0

log = logging.getLogger("cdc.status")


def lock_path(state_dir: Path, source: str) -> Path:
    return Path(state_dir) / f"{source}.lock"


def status_path(state_dir: Path, source: str) -> Path:
    return Path(state_dir) / f"{source}.status.json"


class LockHeld(Exception):
    def __init__(self, source: str, pid: int | None) -> None:
        self.pid = pid
        super().__init__(f"source {source} is running (pid {pid or '?'}): stop it first")


class SourceLock:
    """``with SourceLock(dir, name):`` raises ``LockHeld`` if a process holds it."""

    def __init__(self, state_dir: Path, source: str) -> None:
        self.path = lock_path(state_dir, source)
        self.source = source
        self._fd: int | None = None

    def acquire(self) -> SourceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self.source, self.holder()) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError:  # a full disk: the lock holds without its pid, which only informs
            pass
        self._fd = fd
        return self

    def reclaim(self) -> None:
        """If the lock file is gone (state_dir removed while running), take a new one at the path, so
        that a second ``cdc run`` of the source is still refused.  ``LockHeld``: another process has it."""
        fd = self._fd
        if fd is None:
            return
        try:
            st = os.stat(self.path)
            if (st.st_ino, st.st_dev) == (os.fstat(fd).st_ino, os.fstat(fd).st_dev):
                return
        except OSError:
            pass
        self._fd = None
        try:
            self.acquire()
        except LockHeld:
            self._fd = fd
            raise
        except OSError:  # cannot create it now (read-only, full): keep the old one, try again later
            self._fd = fd
            return
        os.close(fd)

    def holder(self) -> int | None:
        """The pid of the process that holds (or last held) the lock."""
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def held(self) -> bool:
        """Does some process hold it right now?  (Does not keep it.)"""
        try:
            self.acquire()
        except LockHeld:
            return True
        except OSError:  # state_dir cannot be written (read-only, full): ask on a read-only descriptor
            return self._held_read_only()
        self.release()
        return False

    def _held_read_only(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False  # no lock file: no process holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SourceLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_STATUS_TYPES: dict[str, type | tuple[type, ...]] = {"updated_at": (int, float), "stalled_since": (int, float, type(None)),
                 "sinks": dict, "pipelines": dict, "snapshot": (dict, type(None)),
                 "blocked_by": (list, type(None)), "last_error": (str, type(None))}


def read_status(state_dir: Path, source: str) -> dict | None:
    """The status file, or None when there is none or it is not one (torn, edited, corrupted)."""
    try:
        live = json.loads(status_path(state_dir, source).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(live, dict) or not all(isinstance(live.get(k), t) for k, t in _STATUS_TYPES.items()
                                             if k in live):
        return None
    if not all(isinstance(v, dict) for k in ("sinks", "pipelines") for v in live.get(k, {}).values()):
        return None
    return live


class StatusWriter:
    """Writes ``<source>.status.json`` from the runner's counters, at most every 2 s."""

    def __init__(self, runner, state_dir: Path) -> None:
        self.runner = runner
        self.path = status_path(state_dir, runner.name)
        self._last = 0.0
        self._failing = False  # the last write failed (logged once)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def tick(self, runner=None) -> None:
        if time.monotonic() - self._last >= STATUS_INTERVAL:
            self.write(running=True)

    def snapshot(self, running: bool) -> dict:
        r = self.runner
        sinks = {}
        for p in r.pipelines:
            for w in p.workers:
                sinks[w.name] = {"pipeline": p.spec.name, "connected": w.connected,
                                 "last_error": redact(w.last_error) if w.last_error else None,
                                 **w.counts}
        error = r.error or (None if r.source_connected else r.source_error)
        error = error or next((f"sink {n}: {s['last_error']}" for n, s in sinks.items() if s["last_error"]), None)
        lag = r.lag_seconds
        return {"source": r.name, "pid": os.getpid(), "running": running, "updated_at": time.time(),
                "position": r.saved_position, "saved_at": r.saved_at, "lag_seconds": lag,
                "events_in_flight": r.tracker.events_in_flight, "counts": dict(r.counts),
                "acknowledged": r.tracker.acked_events,
                "pipelines": {p.spec.name: dict(p.counts) for p in r.pipelines},
                "sinks": sinks, "last_error": redact(str(error)) if error else None,
                "snapshot": snapshot_status(r),
                "blocked_by": r.blocked_by, "stalled_since": r.stalled_since}

    def write(self, running: bool) -> None:
        self._last = time.monotonic()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # state_dir removed while running
            tmp.write_text(json.dumps(self.snapshot(running), default=str))
            os.replace(tmp, self.path)
        except OSError as exc:  # best effort: the checkpoint is what counts, but say it is stale
            try:
                tmp.unlink(missing_ok=True)  # give back the space a partial file holds
            except OSError:
                pass
            if not self._failing:
                self._failing = True
                log.warning("cannot write the status file %s (%s): `cdc status` shows what it held "
                            "before (see its age) until it can; delivery and checkpoints go on", self.path,
                            exc.strerror)
            return
        if self._failing:
            self._failing = False
            log.info("the status file %s is written again", self.path)
