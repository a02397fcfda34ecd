"""The list/remove side of the ``file`` and ``table`` dead-letter queues.

File: removal appends a ``{"dead_letter_removed": ID}`` line instead of rewriting the
file, so ``cdc dlq replay`` is safe while the pipeline keeps appending to it.
Table: removal is a ``DELETE`` by entry id.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from ..abc import DeadLetterStore
from ..sinks.file import FileSink, write_lines
from ..sinks.table import TableSink
from .record import DeadLetter

__all__ = ["FileDeadLetterStore", "TableDeadLetterStore", "UnsupportedStore", "store_for"]


class FileDeadLetterStore:
    def __init__(self, sink) -> None:
        if not sink.template.is_constant:
            raise ValueError("a file dead-letter queue needs a fixed path (no {fields})")
        self.path = Path(sink.template.text)

    def list(self) -> list[DeadLetter]:
        if not self.path.exists():
            return []
        entries: dict[str, DeadLetter] = {}
        for line in self.path.read_bytes().splitlines():
            if not line.strip():
                continue
            record = orjson.loads(line)
            if "dead_letter_removed" in record:
                entries.pop(record["dead_letter_removed"], None)
            elif "dead_letter" in (record.get("message") or {}):
                entry = DeadLetter.from_record(record)
                entries[entry.id] = entry
        return list(entries.values())

    def remove(self, entry_id: str) -> None:
        line = orjson.dumps({"dead_letter_removed": entry_id, "ts_ms": int(time.time() * 1000)}) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.fstat(fd).st_size
            try:
                write_lines(fd, [line])
                os.fsync(fd)
            except OSError as exc:  # a full disk: no torn line, the entry stays listed
                os.ftruncate(fd, start)
                raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        finally:
            os.close(fd)


class TableDeadLetterStore:
    def __init__(self, sink) -> None:
        self.sink = sink

    def _target(self):
        if self.sink.target is None:
            self.sink.open()
        return self.sink.target

    def list(self) -> list[DeadLetter]:
        t = self._target()
        with t.conn.cursor() as cur:
            cur.execute(f"SELECT body FROM {t.quote(self.sink.table)} ORDER BY seq")
            rows = cur.fetchall()
        t.conn.commit()
        out = []
        for (body,) in rows:
            record = orjson.loads(body) if isinstance(body, (str, bytes)) else body
            if "dead_letter" in (record.get("message") or {}):
                out.append(DeadLetter.from_record(record))
        return out

    def remove(self, entry_id: str) -> None:
        t = self._target()
        with t.conn.cursor() as cur:
            table = t.quote(self.sink.table).replace("%", "%%")  # not a placeholder
            cur.execute(f"DELETE FROM {table} WHERE entry_id = %s", (entry_id,))
        t.conn.commit()


class UnsupportedStore(LookupError):
    """The DLQ's sink type cannot be listed by cdc (e.g. a Kafka topic)."""


def store_for(component: Any) -> DeadLetterStore:
    """The store behind a ``dead_letter`` config component."""
    if component.factory is FileSink:
        return FileDeadLetterStore(component.build())
    if component.factory is TableSink:
        return TableDeadLetterStore(component.build())
    raise UnsupportedStore(f"a dead-letter queue of type {component.type!r} cannot be listed by cdc "
                           "(file and table can); read it with the destination's own tools")
