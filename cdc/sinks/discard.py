"""``discard``: serialises every event to JSON and throws it away (benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

from ..event import ChangeEvent

__all__ = ["DiscardSink"]


class DiscardSink:
    """Counts events and bytes; nothing is kept."""

    def __init__(self, serialize: bool = True) -> None:
        self.serialize = serialize
        self.events = 0
        self.bytes = 0

    def open(self) -> None:
        pass

    def write(self, events: Sequence[ChangeEvent]) -> None:
        if self.serialize:
            self.bytes += sum(len(e.to_json()) for e in events)
        self.events += len(events)

    def close(self) -> None:
        pass
