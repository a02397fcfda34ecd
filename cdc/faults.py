"""Named crash points, for the chaos tests (``tests/chaos/``).

``CDC_CRASH_AT=after_sink_write:3`` makes the process SIGKILL itself the 3rd time that
point is reached; several points are comma-separated (``after_ack:2,sink_backoff:1``),
and a point without a count crashes the first time.  Each crash first writes one line
to stderr (``cdc: crash point after_ack reached (2nd time): SIGKILL``), so a test can
tell a crash at a point from one of its own kills.

The points, each reached once per batch or rarer, never once per event:

===================  =============================================================
``after_sink_write``  a sink wrote a batch, before the batch is acknowledged
                      (``cdc/engine/worker.py``)
``sink_backoff``      a sink's write failed and it is about to wait before retrying
                      (``cdc/engine/worker.py``, ``_attempt``)
``after_ack``         every sink acknowledged up to a commit, before the checkpoint is
                      saved (``cdc/engine/runner.py``, ``_checkpoint``)
``checkpoint_write``  in the middle of a checkpoint write: the ``file`` store wrote and
                      fsynced its temporary file but has not renamed it; the
                      ``postgres`` store is about to send its upsert
``mid_transaction``   a batch that ends inside a source transaction was handed to the
                      sinks (``cdc/engine/runner.py``, ``_dispatch``)
``snapshot_chunk``    a snapshot chunk's rows were handed to the sinks, its progress
                      not yet saved (``cdc/engine/runner.py``, ``_dispatch``)
===================  =============================================================

A call site costs one global lookup and an ``is not None`` test when the variable is
unset: ``crash_point`` is resolved once, at import, to ``None``.  This module imports
nothing of cdc, so any module may use it without an import cycle::

    from ..faults import crash_point
    ...
    if crash_point is not None: crash_point("after_ack")  # noqa: E701

``bench/crash_points.py`` measures that cost.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

__all__ = ["POINTS", "ENV", "crash_point", "parse"]

ENV = "CDC_CRASH_AT"
POINTS = frozenset({"after_sink_write", "sink_backoff", "after_ack", "checkpoint_write", "mid_transaction",
                    "snapshot_chunk"})


def parse(spec: str) -> dict[str, int]:
    """``"after_ack:2,sink_backoff"`` -> ``{"after_ack": 2, "sink_backoff": 1}``; ValueError
    naming the variable and the known points for anything else."""
    plan: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown crash point {name!r} (known: {', '.join(sorted(POINTS))})")
        try:
            n = int(count) if count else 1
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ENV}: {part!r}: the count after ':' must be a whole number >= 1")
        plan[name] = n
    return plan


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _crasher(plan: dict[str, int]) -> Callable[[str], None]:
    reached: dict[str, int] = {}
    lock = threading.Lock()

    def crash_point(name: str) -> None:
        target = plan.get(name)
        if target is None:
            return
        with lock:
            n = reached[name] = reached.get(name, 0) + 1
            if n == target:
                os.write(2, f"cdc: crash point {name} reached ({_ordinal(n)} time): SIGKILL\n".encode())
                os.kill(os.getpid(), signal.SIGKILL)

    return crash_point


def _install(spec: str | None) -> Callable[[str], None] | None:
    plan = parse(spec) if spec else {}
    return _crasher(plan) if plan else None


#: None unless ``CDC_CRASH_AT`` names a point (read once, at import)
crash_point: Callable[[str], None] | None = _install(os.environ.get(ENV))
