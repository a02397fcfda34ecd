"""Client libraries' own logs (pika, librdkafka, httpx) go through cdc's logging as
debug detail under ``cdc.sink.<type>.<library>``; what an operator needs is the one
line per state change the sink itself writes ("broker down", "broker back after 20 s")."""

from __future__ import annotations

import logging
import time

__all__ = ["route_library_logs", "LibraryLog", "BrokerState"]


class _ToDebug(logging.Handler):
    """Re-emits a library's records at debug level on a cdc logger, without tracebacks."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = logging.getLogger(target)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.target.isEnabledFor(logging.DEBUG):
            return
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string must not break logging
            message = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            message += f" ({type(exc).__name__}: {exc})"
        self.target.debug("%s: %s", record.name, message)


def route_library_logs(library: str, target: str) -> None:
    """Send logger ``library``'s records to ``target`` at debug level (idempotent)."""
    logger = logging.getLogger(library)
    if not any(isinstance(h, _ToDebug) for h in logger.handlers):
        logger.addHandler(_ToDebug(target))
        logger.propagate = False


class LibraryLog:
    """A ``logger`` for librdkafka (it calls ``log(level, fmt, *args)``): debug only."""

    def __init__(self, target: str) -> None:
        self.target = logging.getLogger(target)

    def log(self, level: int, msg: str, *args) -> None:
        self.target.debug(msg, *args)


class BrokerState:
    """Up or down, logged once per change on the sink's logger."""

    def __init__(self, log: logging.Logger, sink: str) -> None:
        self.log = log
        self.sink = sink
        self.down_since: float | None = None
        self.reason = ""

    def down(self, reason: str) -> None:
        self.reason = reason
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.log.warning("sink %s: broker down: %s", self.sink, reason)

    def up(self) -> None:
        if self.down_since is not None:
            self.log.info("sink %s: broker back after %.0f s", self.sink, time.monotonic() - self.down_since)
            self.down_since = None
            self.reason = ""

    def not_ready(self) -> str | None:
        if self.down_since is None:
            return None
        return f"broker down for {time.monotonic() - self.down_since:.0f} s: {self.reason}"
