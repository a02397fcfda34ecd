"""``cdc run`` with several sources: one child process per source, restarted with
backoff when it dies, stopped together on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

from .retry import Backoff

__all__ = ["supervise"]

log = logging.getLogger("cdc.supervisor")
MAX_BACKOFF = 60.0
HEALTHY_AFTER = 60.0  # a child up this long has its backoff reset


def _spawn(config: str, source: str, grace: float) -> subprocess.Popen:
    # A session of its own: a terminal's Ctrl-C reaches only the supervisor, which
    # forwards one SIGTERM, so a child drains instead of seeing a "second signal".
    return subprocess.Popen([sys.executable, "-m", "cdc", "run", config, "--source", source,
                             "--grace-period", str(grace)], start_new_session=True)


def supervise(config: str, sources: list[str], grace: float) -> int:
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:  # second signal: children exit at once too
            for child in children.values():
                if child.poll() is None:
                    child.kill()
            return
        stopping = True
        log.info("stopping %d source process(es)", len(children))
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    children = {s: _spawn(config, s, grace) for s in sources}
    started = {s: time.monotonic() for s in sources}
    backoff = {s: Backoff(1.0, MAX_BACKOFF) for s in sources}
    restart_at: dict[str, float] = {}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("supervising sources %s", ", ".join(sources))
    while True:
        time.sleep(0.2)
        if stopping:
            if all(c.poll() is not None for c in children.values()):
                failed = [s for s, c in children.items() if c.returncode not in (0, -signal.SIGTERM)]
                return 1 if failed else 0
            continue
        now = time.monotonic()
        for source, child in children.items():
            if child.poll() is None:
                if now - started[source] > HEALTHY_AFTER:
                    backoff[source].reset()
                continue
            if source not in restart_at:
                delay = backoff[source].next()
                restart_at[source] = now + delay
                log.warning("source %s exited with %s; restarting in %.0fs", source, child.returncode, delay)
            elif now >= restart_at[source]:
                del restart_at[source]
                children[source] = _spawn(config, source, grace)
                started[source] = now
