"""``outbox``: the transactional outbox, in the spirit of Debezium's outbox event router.

The application inserts a row into an outbox table in the same transaction as its
business change; columns ``id, message_id, message_type, payload, status,
fail_count, occurred_at, processed_at, failed_at``.  Each *inserted* row becomes
one message; updates and deletes of outbox rows (status bookkeeping, cleanup) are
dropped.  Events of other tables pass through unchanged unless ``tables`` is empty
(every event is then an outbox row).

The message as a ``ChangeEvent``:

- ``id`` = ``message_id`` (stable: consumers deduplicate on it), ``op`` = ``c``;
- ``after`` = the payload (a JSON object; a text payload holding JSON is parsed;
  any other value is wrapped as ``{"payload": value}``, and kept as it is in
  ``message["payload"]``), ``before`` = None;
- ``key`` = ``{"message_id": ...}``, or with ``key: aggregate_id`` that column's
  value as ``{"aggregate_id": ...}`` (Debezium's ``table.field.event.key``);
- ``message`` = ``{"id", "type", "outbox_id", "occurred_at"}``, plus ``key`` (the
  aggregate id) and ``payload`` (a payload that is not an object);

Sinks send such an event as the message itself by default (``content: auto``): the
payload as the body, ``message_id`` as the message id, ``message_type`` as a header,
the aggregate id as the Kafka key.
- ``destination`` = ``destination`` template rendered with ``{message_type}`` (and
  the usual ``{source}``, ``{schema}``, ``{table}``): the topic, queue, stream, file
  or URL the sink uses where its own template says ``{destination}``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import ConfigError
from ..event import ChangeEvent
from ..templates import Template

__all__ = ["Outbox"]


def _parsed(payload: Any) -> Any:
    if isinstance(payload, str):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    return payload


class Outbox:
    """Options: ``destination`` (default ``outbox.{message_type}``), ``tables``
    (the outbox tables; default: every event of the pipeline is an outbox row) and
    ``key`` (the aggregate id column that keys the messages, e.g. ``aggregate_id``)."""

    def __init__(self, destination: str = "outbox.{message_type}", tables: list[str] | None = None,
                 key: str | None = None) -> None:
        self.key_column = key
        self.template = Template(destination, "destination")
        problems = self.template.problems("destination")
        if problems:
            raise ConfigError(problems)
        self.tables = frozenset(tables) if tables else None

    def __call__(self, event: ChangeEvent) -> ChangeEvent | None:
        if self.tables is not None and event.table not in self.tables \
                and event.source.get("table") not in self.tables:
            return event
        if event.op != "c":
            return None
        row = event.after or {}
        for column in ("message_id", "message_type", "payload") + ((self.key_column,) if self.key_column else ()):
            if column not in row:
                raise ValueError(f"outbox row has no {column!r} column")
        message_id = str(row["message_id"])
        message = {"id": message_id, "type": row["message_type"], "outbox_id": row.get("id"),
                   "occurred_at": row.get("occurred_at")}
        payload = _parsed(row["payload"])
        if isinstance(payload, dict):
            after = payload
        else:
            after = {"payload": payload}
            message["payload"] = payload
        if self.key_column:
            key = {self.key_column: row[self.key_column]}
            message["key"] = row[self.key_column]
        else:
            key = {"message_id": message_id}
        out = event.replace(id=message_id, op="c", before=None, after=after, key=key, message=message)
        out.destination = self.template.render(out)
        return out
