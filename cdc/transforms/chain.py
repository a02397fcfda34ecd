"""Run a pipeline's transforms over a batch of events."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import TransformError
from ..event import ChangeEvent

__all__ = ["TransformChain", "DropEvent", "TransformMutatedInput"]

#: Events checked in full per transform before the check falls back to one event per batch.
FULL_CHECKS = 1000


class DropEvent(Exception):
    """Raise from a transform to drop the event (returning ``None`` does the same)."""


class TransformMutatedInput(TransformError):
    """A transform changed the event it was given.  The event object is shared by every
    pipeline of the source (and by the dead-letter and retry paths), so this is never
    skipped or dead-lettered: the source stops."""


def _trusted(fn: Callable) -> bool:
    """The built-in transforms never change their input (tests/test_transforms.py)."""
    from .builtin import Filter, Mask, Rename, Route, Select
    return isinstance(fn, (Filter, Select, Rename, Mask, Route))


def _snapshot(e: ChangeEvent) -> tuple:
    """What a transform must leave as it was: the attributes, and the rows' top-level
    values (a shallow copy: cheap, and enough for ``row[k] = v``, ``del``, ``pop``...)."""
    return (e.id, e.op, e.table, e.destination, e.ts_ms, e.position,
            None if e.before is None else dict(e.before), None if e.after is None else dict(e.after),
            None if e.key is None else dict(e.key), dict(e.source),
            None if e.message is None else dict(e.message))


_FIELDS = ("id", "op", "table", "destination", "ts_ms", "position", "before", "after", "key", "source", "message")


class TransformChain:
    """Applies ``transforms`` in order; an exception becomes a ``TransformError``
    that names the pipeline, the transform, the event id, table and position.

    A transform that is not built in is watched for changing its input: its first
    ``FULL_CHECKS`` events are compared before and after, then one event per batch
    (a rotating sample).  A change raises ``TransformMutatedInput``."""

    def __init__(self, pipeline: str, transforms: Sequence[tuple[str, Callable]]) -> None:
        self.pipeline = pipeline
        self.transforms = list(transforms)
        self._watch = [not _trusted(fn) for _, fn in self.transforms]
        self._full = [FULL_CHECKS] * len(self.transforms)
        self._turn = 0

    def __bool__(self) -> bool:
        return bool(self.transforms)

    def apply(self, events: list[ChangeEvent]) -> list[ChangeEvent]:
        for step, (name, fn) in enumerate(self.transforms):
            watched = None
            if self._watch[step]:
                if self._full[step] > 0:
                    watched = events[:self._full[step]]
                    self._full[step] -= len(watched)
                else:
                    self._turn += 1
                    watched = [events[self._turn % len(events)]]
                before = [_snapshot(e) for e in watched]
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
            if watched is not None:
                self._check(name, fn, watched, before)
            events = out
            if not events:
                break
        return events

    def _check(self, name: str, fn: Callable, watched: list[ChangeEvent], before: list[tuple]) -> None:
        for event, old in zip(watched, before):
            new = _snapshot(event)
            if new != old:
                changed = [f for f, a, b in zip(_FIELDS, old, new) if a != b]
                plugin = getattr(fn, "name", None) or getattr(fn, "__qualname__", None) or type(fn).__name__
                raise TransformMutatedInput(
                    f"{plugin} mutated the event it was given ({', '.join(changed)}). Every pipeline "
                    f"of the source shares that event, so the change would leak into their copies: return "
                    f"a changed copy instead, e.g. event.replace(after={{**event.after, ...}})",
                    event=event, pipeline=self.pipeline, transform=name)
