"""Fuzzing the pgoutput reader (cdc/sources/postgres/source.py over pgoutput.py) with
hypothesis: generated streams decode to the rows that were encoded; mutated streams end
in events or a ``SourceError`` naming the position, never another exception or a hang.

The bytes go through ``PostgresSource.poll`` as they come off the replication socket: a
``ReplicationStream`` whose buffer holds the generated frames and whose socket side
(more bytes, status updates) has nothing to give."""

from __future__ import annotations

import functools
import signal
import struct
import time

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdc.errors import SourceConnectionError, SourceError
from cdc.event import UNAVAILABLE, Commit
from cdc.sources.postgres import pgoutput
from cdc.sources.postgres.pgoutput import Decoder, Relation, _generate
from cdc.sources.postgres.replication import ReplicationStream
from cdc.sources.postgres.source import PostgresSource
from cdc.sources.postgres.types import _ARRAYS, _SCALARS, converter_for

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True, params=["c", "python"])
def decoders(request, monkeypatch):
    """Every test runs with the C decoder (``_cpgoutput.c``) and with the generated Python one."""
    monkeypatch.setattr(pgoutput, "SPEEDUPS", request.param == "c")
    return request.param

def test_the_c_decoder_is_built():
    """CI installs with a compiler: a broken build must not pass as the Python fallback."""
    assert pgoutput._cpgoutput is not None


# column types: (type oid, hypothesis strategy of the value, its text form, the decoded value)
TYPES = {
    20: (st.integers(-2**63, 2**63 - 1), str, lambda v: v),                        # bigint
    25: (st.text(max_size=30), str, lambda v: v),                                 # text
    16: (st.booleans(), lambda v: "t" if v else "f", lambda v: v),                 # boolean
    1700: (st.decimals(allow_nan=False, allow_infinity=False, places=3), str, str),  # numeric
    3802: (st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=5),  # jsonb
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                  max_size=3), max_leaves=4),
           lambda v: orjson.dumps(v).decode(), lambda v: v),
}


class BytesStream(ReplicationStream):
    """A replication stream whose socket has delivered ``data`` and nothing more."""

    def __init__(self, data: bytes) -> None:
        super().__init__("postgresql://fuzz@127.0.0.1/fuzz")
        self._tail = data
        self.statuses = 0

    def _read_libpq(self, timeout: float, wait: bool = True) -> bytes:
        return b""

    def send_status(self, flush_lsn: int, reply: bool = False) -> None:
        self.statuses += 1


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def xlog(msg: bytes, lsn: int) -> bytes:
    body = b"w" + struct.pack(">QQq", lsn, lsn, 0) + msg
    return b"d" + struct.pack(">i", len(body) + 4) + body


def relation(oid: int, columns: list[tuple[str, int]], key: str) -> bytes:
    out = b"R" + struct.pack(">I", oid) + _cstr("public") + _cstr("t") + b"d" + struct.pack(">H", len(columns))
    for name, type_oid in columns:
        out += bytes([1 if name == key else 0]) + _cstr(name) + struct.pack(">Ii", type_oid, -1)
    return out


def tuple_data(values: list) -> bytes:
    out = struct.pack(">H", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNAVAILABLE:
            out += b"u"
        else:
            raw = v.encode()
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


@st.composite
def streams(draw):
    """(frames, expected [(op, after, json_null)]) of one relation and a few transactions."""
    ncols = draw(st.integers(1, 6))
    types = [20] + [draw(st.sampled_from(sorted(TYPES))) for _ in range(ncols - 1)]
    columns = [(f"c{i}", t) for i, t in enumerate(types)]
    frames = [xlog(relation(16384, columns, "c0"), 0x1000)]
    expected = []
    lsn = 0x2000
    for _ in range(draw(st.integers(1, 4))):
        frames.append(xlog(b"B" + struct.pack(">QqI", lsn + 0x100, 0, 7), lsn))
        for _ in range(draw(st.integers(1, 5))):
            values, texts = {}, []
            for i, (name, t) in enumerate(columns):
                strategy, text, decoded = TYPES[t]
                if i and draw(st.booleans()) and draw(st.booleans()):
                    values[name] = None
                    texts.append(None)
                    continue
                v = draw(strategy)
                values[name] = decoded(v)
                texts.append(text(v))
            json_null = [name for (name, t), text in zip(columns, texts) if t == 3802 and text == "null"]
            op = draw(st.sampled_from("IU"))
            lsn += 0x10
            if op == "I":
                frames.append(xlog(b"I" + struct.pack(">I", 16384) + b"N" + tuple_data(texts), lsn))
            else:
                frames.append(xlog(b"U" + struct.pack(">I", 16384) + b"N" + tuple_data(texts), lsn))
            expected.append(({"I": "c", "U": "u"}[op], values, json_null or None))
        lsn += 0x10
        frames.append(xlog(b"C" + struct.pack(">BQQq", 0, lsn, lsn + 8, 0), lsn))
        lsn += 0x100
    return frames, expected


def _source() -> PostgresSource:
    source = PostgresSource(dsn="postgresql://fuzz@127.0.0.1/fuzz", tables=["public.t"])
    source._last_status = time.monotonic() + 3600  # no status update is due
    return source


class Hang(BaseException):
    """Not an Exception: the reader turns those into its decode error, and a hang must not pass as one."""


def _read_all(data: bytes, max_polls: int = 10_000) -> list:
    """Poll until the buffer holds no whole frame; a poll that takes over 2 s is a hang."""
    source = _source()
    source.stream = stream = BytesStream(data)
    items: list = []

    def alarm(signum, frame):
        raise Hang(f"poll did not return within 2 s on {len(data)} bytes: {data[:200]!r}")

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        for _ in range(max_polls):
            signal.setitimer(signal.ITIMER_REAL, 2.0)
            try:
                got = source.poll(0)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if not got and not stream._has_frame(stream._tail, stream._tail_pos):
                return items
            items += got
        raise Hang(f"{max_polls} polls and the buffer still holds frames: {stream._tail[stream._tail_pos:][:200]!r}")
    finally:
        signal.signal(signal.SIGALRM, previous)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_generated_streams_decode_to_what_was_encoded(stream):
    frames, expected = stream
    items = _read_all(b"".join(frames))
    events = [i for i in items if not isinstance(i, Commit)]
    assert [(e.op, e.after, e.source.get("json_null")) for e in events] == expected
    assert all(e.table == "public.t" and e.key == {"c0": e.after["c0"]} for e in events)
    assert sum(isinstance(i, Commit) for i in items) == len({e.id.split(":")[0] for e in events})


class ChunkedStream(BytesStream):
    """The socket delivers ``data`` in the given chunks, one per read."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(b"")
        self.chunks = chunks

    def _read_libpq(self, timeout: float, wait: bool = True) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(1, 400), min_size=1, max_size=40), st.integers(1, 3))
def test_a_stream_split_anywhere_and_read_a_few_events_per_poll_decodes_the_same(stream, cuts, per_poll):
    """A buffer is read over several polls without being copied, and a frame cut by the end
    of one read is joined to the next: both decode exactly what one whole buffer does."""
    frames, expected = stream
    data = b"".join(frames)
    chunks, at = [], 0
    for size in cuts:
        chunks.append(data[at:at + size])
        at += size
    chunks = [c for c in chunks if c] + ([data[at:]] if at < len(data) else [])
    source = _source()
    source.max_poll_events = per_poll
    source.stream = stream_ = ChunkedStream(chunks)
    items: list = []
    for _ in range(10_000):
        got = source.poll(0)
        if not got and not stream_.chunks and not stream_._has_frame(stream_._tail, stream_._tail_pos):
            break
        items += got
    events = [i for i in items if not isinstance(i, Commit)]
    assert [(e.op, e.after, e.source.get("json_null")) for e in events] == expected
    assert stream_._tail_pos == len(stream_._tail) or not stream_._tail
    assert source.bytes_read == len(data)


def test_json_null_is_told_from_sql_null_by_both_tuple_decoders():
    """pgoutput sends SQL NULL as kind 'n' and JSON null as the text 'null'; the compiled
    decoder and its fallback (``Decoder.tuple``: here a buffer that ends in an 'n') agree."""
    decoder = Decoder()
    rel = decoder.relation(relation(16384, [("id", 20), ("doc", 3802), ("other", 114), ("note", 25)], "id"))
    data = tuple_data(["1", "null", "null", None])
    fallback = rel.decode(data, 0, None)
    compiled = rel.decode(data + b"\0" * 8, 0, None)  # room for the combined kind+length read
    assert fallback[0] == compiled[0] == {"id": 1, "doc": None, "other": None, "note": None}
    assert fallback[3] == compiled[3] == ["doc", "other"]
    for sql_null in (tuple_data(["1", None, "{}", None]), tuple_data(["1", None, "{}", None]) + b"\0" * 8):
        row, key, _, json_null = rel.decode(sql_null, 0, None)
        assert (row, key, json_null) == ({"id": 1, "doc": None, "other": {}, "note": None}, {"id": 1}, None)


@st.composite
def mutated(draw):
    frames, _ = draw(streams())
    data = bytearray(b"".join(frames))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "cut", "drop", "insert", "swap"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and data:
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord("B"), ord("C"), ord("I"), ord("R"),
                                             ord("T"), ord("M"), ord("k"), ord("w"), ord("n"), ord("u")]))
        elif kind == "cut":
            del data[at:]
        elif kind == "drop":
            del data[at:at + draw(st.integers(1, 40))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif kind == "swap" and len(frames) > 1:
            i, j = draw(st.integers(0, len(frames) - 1)), draw(st.integers(0, len(frames) - 1))
            frames[i], frames[j] = frames[j], frames[i]
            data = bytearray(b"".join(frames))
    return bytes(data)


SERVER_ENDS = ("the server ended the replication stream", "replication stream error")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
@example(b"c\x00\x00\x00\x04")  # a mutation can make a CopyDone ('c') or ErrorResponse ('E') frame
def test_mutated_streams_end_in_events_or_a_source_error(data):
    try:
        _read_all(data)
    except SourceConnectionError as exc:  # the server's own end of the stream: cdc reconnects
        assert any(end in str(exc) for end in SERVER_ENDS), exc
    except SourceError as exc:
        assert "cannot decode the replication stream after" in str(exc), exc


@pytest.mark.parametrize("kind", [b"w", b"k", b"x"])
@pytest.mark.parametrize("length", [-1, -5, 0, 3])
def test_a_frame_length_below_its_header_is_an_error_not_a_hang(length, kind):
    frame = b"d" + struct.pack(">i", length) + kind + bytes(24) + b"B" + bytes(20)
    with pytest.raises(SourceError, match="cannot decode the replication stream after 0/0"):
        _read_all(frame, max_polls=50)



# Differential fuzzing of the two decoders: every type oid, value texts a server sends and bytes it
# never sends, bad lengths, wrong column counts, mutations, odd positions and old rows.
DIFF_OIDS = sorted(_SCALARS) + sorted(_ARRAYS) + [600, 16400]  # 600: point (text); 16400: a user array
_INTS = [b"0", b"-9223372036854775808", b"9223372036854775807", b"123456789012345678", b"1234567890123456789",
         b"-", b"", b" 12", b"1_0", b"+5", b"12a", b"-0", b"00012"]
_FLOATS = [b"1.5", b"NaN", b"Infinity", b"-Infinity", b"x", b""]
_JSONS = [b"null", b"{}", b'{"a":[1,null]}', b"[", b""]
DIFF_TEXTS = {
    16: [b"t", b"f", b"", b"tt"], 17: [b"\\x0a0b", b"\\x", b"abc", b"\\xzz"],
    20: _INTS, 21: _INTS, 23: _INTS, 26: _INTS, 700: _FLOATS, 701: _FLOATS, 114: _JSONS, 3802: _JSONS,
    1114: [b"2024-01-02 03:04:05", b"0044-03-15 10:00:00 BC", b"infinity", b"", b"BC", b"x BC"],
    1184: [b"2024-01-02 03:04:05+00", b"2024-01-02 03:04:05+02", b"0044-03-15 10:00:00+00 BC", b"", b"-infinity"],
    1082: [b"2024-01-02", b"0044-03-15 BC", b"", b"C", b"1-2 BC"],
    25: [b"", b"hello", "h\u00e9\u20ac".encode(), b"\xff\xfe", b"\xed\xa0\x80", b"a\x00b"],
}
DIFF_ARRAYS = [b"{}", b"{1,2,NULL}", b'{"a b",c}', b"{{1,2},{3,4}}", b"[1:2]={1,2}", b"{", b"", b"{1,", b'{"a',
               b"{t,f}", b'{"2024-01-02 03:04:05+00"}', b'{"{\\"a\\":1}",null}', b"{NaN,1.5}"]


@st.composite
def decoder_cases(draw):
    n = draw(st.integers(0, 8))
    oids = [draw(st.sampled_from(DIFF_OIDS)) for _ in range(n)]
    names = [draw(st.sampled_from(["a", "b", "id"])) if draw(st.integers(0, 9)) == 0 else f"c{i}" for i in range(n)]
    key = draw(st.lists(st.sampled_from(names), max_size=3, unique=True)) if names else []
    body = b""
    for oid in oids:
        kind = draw(st.sampled_from("ttttttnnubx"))
        if kind == "t":
            texts = DIFF_ARRAYS if oid in _ARRAYS or oid == 16400 else DIFF_TEXTS.get(oid, DIFF_TEXTS[25])
            raw = draw(st.sampled_from(texts)) if draw(st.integers(0, 4)) else draw(st.binary(max_size=12))
            size = len(raw)
            if draw(st.integers(0, 15)) == 0:
                size = draw(st.sampled_from([-1, -5, -2**31, 2**31 - 1, 2**31 - 6, size + 1, size + 100,
                                             max(size - 1, 0)]))
            body += b"t" + struct.pack(">i", size) + raw
        elif kind == "b":
            raw = draw(st.binary(max_size=6))
            size = len(raw) if draw(st.booleans()) else draw(st.integers(-2**31, 2**31 - 1))
            body += b"b" + struct.pack(">i", size) + raw
        elif kind == "x":
            body += bytes([draw(st.integers(0, 255))])
        else:
            body += kind.encode()
    data = struct.pack(">H", n if draw(st.integers(0, 9)) else draw(st.integers(0, 65535))) + body
    mutation = draw(st.sampled_from(["none", "none", "cut", "append", "flip", "insert"]))
    if mutation == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif mutation == "append":
        data += draw(st.binary(max_size=10))
    elif mutation == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    elif mutation == "insert":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=5)) + data[at:]
    prefix = draw(st.binary(max_size=4))
    data = prefix + data
    pos = len(prefix) if draw(st.integers(0, 19)) else draw(st.integers(0, len(data) + 3))
    old = draw(st.sampled_from([None, {name: ("old", name) for name in names[::2]} | {"zz": 1}, {}]))
    return oids, names, key, data, pos, old


def _outcome(decode, data, pos, old):
    try:
        return repr(decode(data, pos, None if old is None else dict(old)))
    except Exception as exc:
        return type(exc).__name__


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=decoder_cases())
def test_c_and_python_decoders_agree(case):
    """The same bytes give the same row, or the same exception, from the C decoder and the
    generated Python one."""
    oids, names, key, data, pos, old = case
    converters = [converter_for(oid, "_mytype" if oid == 16400 else None) for oid in oids]
    pgoutput.SPEEDUPS = True
    rel = Relation(1, "public", "t", names, converters, key, "d")
    assert isinstance(rel.decode, functools.partial)  # the C decoder
    assert _outcome(rel.decode, data, pos, old) == _outcome(_generate(rel), data, pos, old)


def test_a_value_longer_than_its_message_is_an_error_not_the_next_frame():
    """A row whose last value claims more bytes than its message holds is not filled from
    the next frame: the reader stops with its decode error."""
    frames = [xlog(relation(16384, [("c0", 20), ("c1", 25)], "c0"), 0x1000),
              xlog(b"B" + struct.pack(">QqI", 0x2100, 0, 7), 0x2000)]
    row = struct.pack(">H", 2) + b"t" + struct.pack(">i", 1) + b"1" + b"t" + struct.pack(">i", 9) + b"hello"
    frames.append(xlog(b"I" + struct.pack(">I", 16384) + b"N" + row, 0x2010))
    frames.append(xlog(b"C" + struct.pack(">BQQq", 0, 0x2020, 0x2028, 0), 0x2020))
    with pytest.raises(SourceError, match="cannot decode the replication stream after"):
        _read_all(b"".join(frames))
