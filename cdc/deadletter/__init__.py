"""Dead letters: events a sink (or a transform) could not process, parked for later.

A dead-letter queue is just another sink (``dead_letter: {type: file, path: ...}``,
``{type: table, dsn: ...}``, ``{type: kafka, ...}``).  A parked event is the
original event whose ``message.dead_letter`` holds what is needed to replay it::

    {"id": "0/1A2B3C8:0", "op": "c", "after": {...}, ...,
     "message": {"dead_letter": {"id": "5f0c1e2d3a4b", "sink": "orders-webhook",
                                 "pipeline": "orders", "destination": null,
                                 "error": {"type": "PermanentSinkError", "message": "...",
                                           "permanent": true},
                                 "attempts": 1, "first_failure": "2026-...Z",
                                 "last_failure": "2026-...Z"}}}

``cdc.engine.deadletters.DeadLetterWriter.park`` writes one such record and returns once the DLQ sink
accepted it (so the checkpoint never passes an event that is neither delivered nor
parked).  ``store_for(component)`` gives the list/remove side used by ``cdc dlq``:
the ``file`` and ``table`` DLQs support it; other sink types (e.g. a Kafka topic)
are write-only from cdc's point of view.
"""

from ..abc import DeadLetterStore
from .record import TRANSFORMS_SINK, DeadLetter, dead_letter_event
from .stores import UnsupportedStore, store_for

__all__ = ["DeadLetter", "DeadLetterStore", "store_for", "UnsupportedStore",
           "dead_letter_event", "TRANSFORMS_SINK"]
