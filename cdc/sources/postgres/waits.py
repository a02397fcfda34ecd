"""Set-up statements that wait for other sessions, named while they wait.

Creating a replication slot waits for every transaction running at that moment to end, and
creating or altering a publication waits for locks on its tables.  A session left idle in a
transaction, or a migration holding a table, would keep ``cdc run`` starting for ever without
a word.  ``NamedWaits`` watches from a second connection (``SideConnection``: bounded) and logs
a WARNING after ``after`` seconds, then every ``every`` seconds, naming the sessions in the way.
"""

from __future__ import annotations

import logging
import threading
import time

from .side import SideConnection, SideError

__all__ = ["NamedWaits"]

log = logging.getLogger("cdc.source.postgres")

# Not the sessions' query text: it may hold personal data or secrets, and the pid finds it.
_BLOCKERS = (b"SELECT a.pid, a.state, a.application_name, a.usename, a.datname, host(a.client_addr),"
             b" extract(epoch FROM now() - coalesce(a.xact_start, a.query_start))::int"
             b" FROM pg_stat_activity a WHERE a.pid = ANY (pg_blocking_pids($1::int)) ORDER BY a.pid")


def _text(value: bytes | None) -> str:
    return value.decode(errors="replace") if value is not None else ""


class NamedWaits:
    """``with NamedWaits(dsn, backend_pid, source) as waits: waits.what = "creating ..."; ...``"""

    def __init__(self, dsn: str | None, pid: int, source: str, after: float, every: float = 30.0) -> None:
        self.dsn, self.pid, self.source = dsn, pid, source
        self.after, self.every = after, every
        self.what = "setting up"
        self._since = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"set-up waits {source}", daemon=True)

    def __enter__(self) -> NamedWaits:
        if self.dsn is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def step(self, what: str) -> None:
        """The next statement: its own wait starts now."""
        self.what, self._since = what, time.monotonic()

    def _run(self) -> None:
        side = SideConnection(self.dsn or "")
        warned: tuple[float, float] | None = None  # (the step's start, when) of the last warning
        try:
            while not self._stop.wait(0.2):
                since, now = self._since, time.monotonic()
                due = self.after if warned is None or warned[0] != since else warned[1] - since + self.every
                if now - since >= due:
                    self._warn(side, now - since)
                    warned = (since, time.monotonic())
        finally:
            side.close()

    def _warn(self, side: SideConnection, waited: float) -> None:
        what = self.what
        try:
            rows = side.query(_BLOCKERS, [str(self.pid).encode()])
        except SideError as exc:
            log.warning("source %s: %s has waited %.0f s; a second connection to ask why failed too (%s): the "
                        "server may be overloaded or stopped", self.source, what, waited, exc)
            return
        if self._stop.is_set():
            return
        if not rows:
            log.warning("source %s: %s has waited %.0f s, blocked by no session cdc can see: a prepared "
                        "transaction (SELECT * FROM pg_prepared_xacts), or a slow or overloaded server",
                        self.source, what, waited)
            return
        sessions = "; ".join(
            f"pid {_text(pid)} ({_text(state) or 'state hidden'}, its transaction open for {_text(secs)} s, "
            f"application {_text(app) or '?'}, user {_text(user)}, database {_text(db)}"
            f"{', from ' + _text(addr) if addr else ''})"
            for pid, state, app, user, db, addr, secs in rows)
        log.warning("source %s: %s has waited %.0f s for other sessions: %s. It goes on once they end: commit or "
                    "roll back their transactions, or end them (SELECT pg_terminate_backend(pid))",
                    self.source, what, waited, sessions)
