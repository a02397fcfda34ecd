"""``cdc run`` with several sources: one child process per source, restarted with
backoff when it dies, stopped together on SIGTERM/SIGINT.

A child that exits with a configuration error (exit code 2) is not restarted: the
supervisor stops every source and exits 2.  Each child asks the kernel for SIGTERM
when the supervisor dies (Linux ``prctl(PR_SET_PDEATHSIG)``), so a ``kill -9`` of the
supervisor does not leave children running with their locks.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time

from .retry import Backoff

__all__ = ["supervise", "follow_supervisor", "CONFIG_ERROR"]

log = logging.getLogger("cdc.supervisor")
MAX_BACKOFF = 60.0
HEALTHY_AFTER = 60.0  # a child up this long has its backoff reset
CONFIG_ERROR = 2      # the exit code of ``cdc run`` for a configuration error
PARENT_ENV = "CDC_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1


def follow_supervisor() -> bool:
    """In a child started by ``supervise``: receive SIGTERM (a graceful stop) when the
    supervisor dies.  Call once the SIGTERM handler is installed.  False when not
    supervised or not on Linux."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError) as exc:
        log.warning("cannot ask for a signal on the supervisor's death: %s", exc)
        return False
    if os.getppid() != int(parent):  # it died before we asked
        log.warning("the supervisor (pid %s) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def _spawn(config: str, source: str, grace: float) -> subprocess.Popen:
    # A session of its own: a terminal's Ctrl-C reaches only the supervisor, which
    # forwards one SIGTERM, so a child drains instead of seeing a "second signal".
    return subprocess.Popen([sys.executable, "-m", "cdc", "run", config, "--source", source,
                             "--grace-period", str(grace)], start_new_session=True,
                            env={**os.environ, PARENT_ENV: str(os.getpid())})


def supervise(config: str, sources: list[str], grace: float) -> int:
    stopping = False
    config_error: list[str] = []

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
                return CONFIG_ERROR if config_error else 1 if failed else 0
            continue
        now = time.monotonic()
        for source, child in children.items():
            if child.poll() is None:
                if now - started[source] > HEALTHY_AFTER:
                    backoff[source].reset()
                continue
            if child.returncode == CONFIG_ERROR:
                config_error.append(source)
                log.error("source %s exited with a configuration error (exit code 2): it is not restarted, "
                          "and every source stops. Fix the config (cdc validate %s) and start cdc again",
                          source, config)
                on_signal(signal.SIGTERM, None)
                break
            if source not in restart_at:
                delay = backoff[source].next()
                restart_at[source] = now + delay
                log.warning("source %s exited with %s; restarting in %.0fs", source, child.returncode, delay)
            elif now >= restart_at[source]:
                del restart_at[source]
                children[source] = _spawn(config, source, grace)
                started[source] = now
