"""A dead letter: the original event plus ``message.dead_letter`` (see ``cdc.deadletter``)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import PermanentError
from ..event import ChangeEvent

__all__ = ["DeadLetter", "dead_letter_event", "TRANSFORMS_SINK"]

#: The ``sink`` of a dead letter parked by a pipeline's transforms.
TRANSFORMS_SINK = "transforms"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class DeadLetter:
    """One parked event as read back from a DLQ."""

    id: str
    sink: str
    pipeline: str
    event: ChangeEvent           # the original event, ``destination`` restored
    error: dict
    attempts: int
    first_failure: str
    last_failure: str

    @classmethod
    def from_record(cls, record: dict) -> DeadLetter:
        message = dict(record.get("message") or {})
        info = message.pop("dead_letter")
        event = ChangeEvent.from_dict({**record, "message": message or None})
        event.destination = info.get("destination")
        return cls(info["id"], info["sink"], info.get("pipeline", ""), event, info.get("error", {}),
                   info.get("attempts", 0), info.get("first_failure", ""), info.get("last_failure", ""))


def dead_letter_event(event: ChangeEvent, sink: str, pipeline: str, error: BaseException,
                      attempts: int, first_failure: float | None) -> ChangeEvent:
    """The record written to the DLQ: the event plus ``message.dead_letter``."""
    now = time.time()
    info = {"id": uuid.uuid4().hex[:12], "sink": sink, "pipeline": pipeline,
            "destination": event.destination,
            "error": {"type": type(error).__name__, "message": str(error),
                      "permanent": isinstance(error, PermanentError)},
            "attempts": attempts, "first_failure": _iso(first_failure or now), "last_failure": _iso(now)}
    return event.replace(message={**(event.message or {}), "dead_letter": info}, destination=None)
