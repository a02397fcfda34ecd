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
  any other value is wrapped as ``{"payload": value}``), ``before`` = None;
- ``key`` = ``{"message_id": ...}``;
- ``message`` = ``{"id", "type", "outbox_id", "occurred_at"}``;
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


def _body(payload: Any) -> dict:
    if isinstance(payload, str):
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    return payload if isinstance(payload, dict) else {"payload": payload}


class Outbox:
    """Options: ``destination`` (default ``outbox.{message_type}``) and ``tables``
    (the outbox tables; default: every event of the pipeline is an outbox row)."""

    def __init__(self, destination: str = "outbox.{message_type}", tables: list[str] | None = None) -> None:
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
        for column in ("message_id", "message_type", "payload"):
            if column not in row:
                raise ValueError(f"outbox row has no {column!r} column")
        message_id = str(row["message_id"])
        message = {"id": message_id, "type": row["message_type"], "outbox_id": row.get("id"),
                   "occurred_at": row.get("occurred_at")}
        out = event.replace(id=message_id, op="c", before=None, after=_body(row["payload"]),
                            key={"message_id": message_id}, message=message)
        out.destination = self.template.render(out)
        return out
