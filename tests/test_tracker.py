"""The acknowledgement tracker never lets the position pass an unacknowledged batch."""

import threading

import pytest

from cdc.engine.tracker import AckTracker

pytestmark = pytest.mark.unit


def test_position_waits_for_every_sink_and_every_earlier_batch():
    t = AckTracker()
    a = t.add(2, {"lsn": "0/A"}, 10, 100)  # two sinks hold batch a
    b = t.add(1, {"lsn": "0/B"}, 5, 50)
    c = t.add(1, None, 3, 30)              # ends mid-transaction: no position of its own
    assert t.position is None and t.events_in_flight == 18
    t.ack(b)
    t.ack(c)
    assert t.position is None              # a is still held by both sinks
    t.ack(a)
    assert t.position is None              # ... and by one
    t.ack(a)
    assert t.position == {"lsn": "0/B"}    # c had no commit: stop at b's
    assert t.drained and t.events_in_flight == 0 and t.bytes_in_flight == 0


def test_batches_no_sink_wanted_complete_in_order():
    t = AckTracker()
    a = t.add(1, {"lsn": "0/1"}, 1, 1)
    t.add(0, {"lsn": "0/2"}, 4, 4)         # filtered out everywhere
    assert t.position is None
    t.ack(a)
    assert t.position == {"lsn": "0/2"}


def test_acks_from_many_threads():
    t = AckTracker()
    seqs = [t.add(3, {"lsn": f"0/{i:X}"}, 1, 1) for i in range(1, 301)]

    def acker():
        for s in seqs:
            t.ack(s)

    threads = [threading.Thread(target=acker) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert t.position == {"lsn": "0/12C"} and t.drained
