"""Helpers for testing transform plugins (no database needed).

    from cdc.transforms.testing import make_event, run_transform

    def test_only_paid():
        paid = make_event("c", after={"id": 1, "status": "paid"})
        assert run_transform(only_paid, paid) == [paid]
        assert run_transform(only_paid, make_event("c", after={"id": 2, "status": "new"})) == []
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ..event import ChangeEvent
from .chain import TransformChain, TransformMutatedInput

__all__ = ["make_event", "run_transform"]


def make_event(op: str = "c", *, after: dict | None = None, before: dict | None = None,
               table: str = "public.orders", key: list[str] | dict | None = None,
               id: str = "0/16B3748:0", source: str = "test", **source_fields: Any) -> ChangeEvent:
    """A realistic PostgreSQL-shaped event; ``key`` defaults to the ``id`` column."""
    schema, _, name = table.rpartition(".")
    row = after if after is not None else before
    if key is None:
        key = ["id"] if row and "id" in row else []
    if isinstance(key, list):
        key = {k: row[k] for k in key} if row else None
    src = {"connector": "postgresql", "name": source, "db": "test", "schema": schema or "public",
           "table": name, "lsn": 23803720, "txId": 1, "ts_ms": 1764091000000, **source_fields}
    return ChangeEvent(id, op, before, after, key, src, 1764091000001, table, "0/16B3748")


def run_transform(transform: Callable, *events: ChangeEvent) -> list[ChangeEvent]:
    """Run ``transform`` like a pipeline does and return what it emits.  Fails if
    the transform changed an input event (events are shared between pipelines)."""
    snapshots = [copy.deepcopy(e.to_dict()) for e in events]
    chain = TransformChain("test", [(getattr(transform, "__name__", type(transform).__name__), transform)])
    try:
        out = chain.apply(list(events))
    except TransformMutatedInput as exc:
        raise AssertionError(f"{transform!r} changed its input event {exc.event.id}; "
                             f"return event.replace(...) instead") from exc
    for event, snapshot in zip(events, snapshots):
        if event.to_dict() != snapshot:
            raise AssertionError(f"{transform!r} changed its input event {event.id}; "
                                 f"return event.replace(...) instead")
    return out
