"""Example transform plugin, used by pipelines.yaml: ``{type: python, function: "myplugins:only_paid"}``.

A transform is a plain callable: it gets one ChangeEvent and returns it (or a
changed copy from ``event.replace``), None to drop it, or a list of events.
"""

from cdc import ChangeEvent


def only_paid(event: ChangeEvent) -> ChangeEvent | None:
    """Keep only orders whose status is 'paid'."""
    row = event.after or {}
    return event if row.get("status") == "paid" else None
