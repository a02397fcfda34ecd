"""Replication slot housekeeping for operators (``cdc checkpoint reset --drop-slot``)."""

from __future__ import annotations

from ...errors import SourceError
from ...lsn import parse_lsn
from . import setup

__all__ = ["drop", "check_position"]


def check_position(dsn: str, slot: str, source: str, position: dict) -> None:
    """``{"lsn": "X/Y"}`` that the slot can resume from: not ahead of the server's WAL,
    not before what the slot has confirmed (the server would silently start there)."""
    if set(position) != {"lsn"}:
        raise ValueError(f'a PostgreSQL position is {{"lsn": "X/Y"}}, not {sorted(position)}')
    lsn = parse_lsn(position["lsn"])
    with setup.connect(dsn, source) as conn:
        row = conn.execute(
            "SELECT pg_current_wal_lsn()::text, (SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
            " WHERE slot_name = %s)", (slot,)).fetchone()
    assert row is not None  # a SELECT without FROM returns one row
    current, confirmed = row
    if lsn > parse_lsn(current):
        raise ValueError(f"{position['lsn']} is ahead of the server's current WAL position {current}")
    if confirmed is not None and lsn < parse_lsn(confirmed):
        raise ValueError(f"{position['lsn']} is before the slot's confirmed position {confirmed}: the server "
                         f"no longer holds that WAL for slot {slot}, and would start at {confirmed}")


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
