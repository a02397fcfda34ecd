"""What a sink sends for one event: the change envelope, or the message itself.

``content`` (an option of every message sink):

- ``envelope``: the change event as JSON (``id``, ``op``, ``before``, ``after``...);
- ``payload``: the message body: an outbox message's payload exactly as the
  application wrote it (objects, arrays, strings, numbers alike); for an ordinary row
  change the row as it is now (``after``), or for a delete the row before it
  (``before``, else the key);
- ``auto`` (default): ``payload`` for events made by the ``outbox`` transform,
  ``envelope`` for the rest, as Debezium's outbox event router does.

Also here: how a key-changing update is split for keyed destinations.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from ..event import ChangeEvent

__all__ = ["Content", "body_of", "is_message", "payload_of", "message_key", "split_key_change"]

Content = Literal["auto", "envelope", "payload"]

_dumps = orjson.dumps


def is_outbox(event: ChangeEvent) -> bool:
    """Made by the ``outbox`` transform (its message carries ``outbox_id``)."""
    message = event.message
    return message is not None and "outbox_id" in message


def is_message(event: ChangeEvent, content: str) -> bool:
    """Is the event sent as a message (its payload) rather than as an envelope?"""
    if content == "auto":
        message = event.message
        return message is not None and "outbox_id" in message
    return content == "payload"


def payload_of(event: ChangeEvent) -> Any:
    """The message body as a JSON value (see the module docstring)."""
    message = event.message
    if message is not None and "outbox_id" in message:
        return message["payload"] if "payload" in message else event.after
    if event.after is not None:
        return event.after
    return event.before if event.before is not None else event.key


def body_of(event: ChangeEvent, content: str) -> bytes:
    """The bytes to send for ``event``."""
    message = event.message
    if content == "payload" or (content == "auto" and message is not None and "outbox_id" in message):
        return _dumps(payload_of(event))
    return event.to_json()


def message_key(event: ChangeEvent) -> bytes | None:
    """A message's broker key: an outbox message's aggregate id when it has one, else
    its id; a row's primary key (compact JSON, sorted) for any other event."""
    message = event.message
    if message is None or "outbox_id" not in message:
        return _dumps(event.key, option=orjson.OPT_SORT_KEYS) if event.key is not None else None
    value = message.get("key")
    if value is None:
        return event.id.encode()
    return value.encode() if isinstance(value, str) else _dumps(value)


def old_key(event: ChangeEvent) -> dict | None:
    """The key before an update, when the update changed it (else None)."""
    key, before = event.key, event.before
    if event.op != "u" or not key or not before:
        return None
    try:
        old = {k: before[k] for k in key}
    except KeyError:  # the old image lacks a key column: nothing to compare
        return None
    return old if old != key else None


def split_key_change(event: ChangeEvent) -> tuple[ChangeEvent, ChangeEvent] | None:
    """An update that changed the key, as Debezium sends it: a delete under the old key
    (id ``<id>:delete``), then a create under the new key (the event's own id)."""
    old = old_key(event)
    if old is None:
        return None
    delete = event.replace(id=f"{event.id}:delete", op="d", after=None, key=old)
    create = event.replace(op="c", before=None)
    return delete, create
