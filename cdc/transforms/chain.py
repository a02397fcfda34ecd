"""Run a pipeline's transforms over a batch of events."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import TransformError
from ..event import ChangeEvent

__all__ = ["TransformChain", "DropEvent"]


class DropEvent(Exception):
    """Raise from a transform to drop the event (returning ``None`` does the same)."""


class TransformChain:
    """Applies ``transforms`` in order; an exception becomes a ``TransformError``
    that names the pipeline, the transform, the event id, table and position."""

    def __init__(self, pipeline: str, transforms: Sequence[tuple[str, Callable]]) -> None:
        self.pipeline = pipeline
        self.transforms = list(transforms)

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def apply(self, events: list[ChangeEvent]) -> list[ChangeEvent]:
        for name, fn in self.transforms:
            out: list[ChangeEvent] = []
            append = out.append
            for event in events:
                try:
                    result = fn(event)
                except DropEvent:
                    continue
                except Exception as exc:
                    raise TransformError(f"{type(exc).__name__}: {exc}", event=event,
                                         pipeline=self.pipeline, transform=name) from exc
                if result is None:
                    continue
                if result.__class__ is ChangeEvent:
                    append(result)
                    continue
                try:
                    for item in result:
                        if not isinstance(item, ChangeEvent):
                            raise TypeError(f"returned {type(item).__name__}, not a ChangeEvent")
                        append(item)
                except TypeError as exc:
                    raise TransformError(f"must return an event, None or events: {exc}",
                                         event=event, pipeline=self.pipeline, transform=name) from None
            events = out
            if not events:
                break
        return events
