"""Replication slot housekeeping for operators (``cdc checkpoint reset --drop-slot``)."""

from __future__ import annotations

from ...errors import SourceError
from . import setup

__all__ = ["drop"]


def drop(dsn: str, slot: str, source: str) -> bool:
    """Drop ``slot``; False when there was none.  Refused while a connection uses it."""
    with setup.connect(dsn, source) as conn:
        row = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                           (slot,)).fetchone()
        if row is None:
            return False
        if row[0] is not None:
            raise SourceError(f"slot {slot} is in use by pid {row[0]} on the server", source=source)
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        return True
