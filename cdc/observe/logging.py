"""Log setup: human-readable lines (default) or one JSON object per line.

Every record passes through ``RedactingFilter`` (no DSN password or secret is ever
printed).  A line about an event passes ``extra=event_fields(event)``; both formats
then carry ``event_id``, ``table`` and ``position``.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from .secrets import RedactingFilter, redact

__all__ = ["setup_logging", "event_fields", "JsonFormatter", "TextFormatter", "EVENT_KEYS"]

EVENT_KEYS = ("event_id", "table", "position")


def event_fields(event) -> dict:
    """``extra=`` for a log call about ``event``."""
    return {"event_id": event.id, "table": event.table, "position": event.position_text()}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k}={getattr(record, k)}" for k in EVENT_KEYS if getattr(record, k, None) is not None]
        return f"{line} [{' '.join(extra)}]" if extra else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage(), "pid": record.process}
        for key in EVENT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                body[key] = value
        if record.exc_info:
            body["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            body["exception"] = record.exc_text
        return json.dumps(body, default=str)


def setup_logging(level: str = "info", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
