"""The C row decoder (``cdc/sources/mysql/_crows.c``) against the generated Python one: for
every column type it reads, random row images (valid encodings and random bytes, NULLs,
cut short) give the same rows and ChangeEvents, value and type, or the same exception."""

from __future__ import annotations

import gc
import math
import os
import resource
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymysqlreplication.column import Column
from pymysqlreplication.constants import FIELD_TYPE as T

from cdc.event import ChangeEvent
from cdc.sources.mysql import _crows
from cdc.sources.mysql import decoder as decoder_module
from cdc.sources.mysql.decoder import TableDecoder, compile_image
from cdc.sources.mysql.types import float32

pytestmark = pytest.mark.unit

_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)


def test_the_c_decoder_is_built():
    """CI installs with a compiler: a broken build must not pass as the Python fallback."""
    assert _crows.Decoder is not None
    assert decoder_module._crows is _crows


def _column(name: str, type_: int, **attrs) -> Column:
    attrs.setdefault("unsigned", False)
    attrs.setdefault("is_primary", False)
    attrs.setdefault("character_set_name", None)
    return Column(type=type_, name=name, **attrs)


def _decimal_bytes(precision: int, scale: int, n: int) -> bytes:
    """MySQL's binary DECIMAL of the integer n / 10**scale."""
    intg = precision - scale
    digits = str(abs(n)).rjust(precision, "0")
    int_digits, frac_digits = digits[:intg], digits[intg:]
    groups = []
    if intg % 9:
        groups.append((_DIG2BYTES[intg % 9], int_digits[:intg % 9]))
    groups += [(4, int_digits[intg % 9 + 9 * k:intg % 9 + 9 * k + 9]) for k in range(intg // 9)]
    groups += [(4, frac_digits[9 * k:9 * k + 9]) for k in range(scale // 9)]
    if scale % 9:
        groups.append((_DIG2BYTES[scale % 9], frac_digits[-(scale % 9):]))
    raw = bytearray(b"".join(int(g or "0").to_bytes(size, "big") for size, g in groups))
    raw[0] |= 0x80
    if n < 0:
        raw = bytearray(b ^ 0xFF for b in raw)
    return bytes(raw)


def _datetime2(y: int, mo: int, d: int, h: int, mi: int, s: int) -> bytes:
    return (((y * 13 + mo) << 22 | d << 17 | h << 12 | mi << 6 | s) + 0x8000000000).to_bytes(5, "big")


def _length(width: int, value: bytes) -> bytes:
    return len(value).to_bytes(width, "little") + value


JSON_TEXTS = st.sampled_from(["null", "[1, 2]", '{"a": null}', "1.5", '"x"', "not json", "", "nul"])


@st.composite
def columns(draw, i: int):
    """(Column, strategy of the bytes of a non-NULL value, json?)"""
    name = f"c{i}"
    kind = draw(st.sampled_from(["int", "float", "double", "year", "varchar", "string", "blob", "enum", "set", "bit",
                                 "decimal", "datetime2", "timestamp2", "time2", "date", "json"]))
    if kind == "int":
        t, size = draw(st.sampled_from([(T.TINY, 1), (T.SHORT, 2), (T.INT24, 3), (T.LONG, 4), (T.LONGLONG, 8)]))
        return _column(name, t, unsigned=draw(st.booleans())), st.binary(min_size=size, max_size=size), False
    if kind in ("float", "double"):
        size = 4 if kind == "float" else 8
        values = st.floats(width=32 if kind == "float" else 64, allow_nan=False).map(
            lambda v: struct.pack("<f" if size == 4 else "<d", v))
        return (_column(name, T.FLOAT if size == 4 else T.DOUBLE), values | st.binary(min_size=size, max_size=size),
                False)
    if kind == "year":
        return _column(name, T.YEAR), st.binary(min_size=1, max_size=1), False
    if kind in ("varchar", "string", "blob", "json"):
        charset = draw(st.sampled_from([None, "utf8mb4", "latin1", "ascii", "binary", "cp1251"]))
        if kind == "blob" or kind == "json":
            width = draw(st.integers(1, 4))
            col = _column(name, T.BLOB, length_size=width, character_set_name=charset)
            limit = 300 if width > 1 else 255
        else:
            col = _column(name, T.VARCHAR if kind == "varchar" else T.STRING,
                          max_length=draw(st.integers(1, 1000)), character_set_name=charset)
            width = 2 if col.max_length > 255 else 1
            limit = min(col.max_length, 300)
        texts = st.text(max_size=60).map(lambda s: s.encode("utf8")[:limit])
        if kind == "json":
            texts = JSON_TEXTS.map(str.encode) | texts
        return col, (texts | st.binary(max_size=min(limit, 80))).map(lambda b: _length(width, b)), kind == "json"
    if kind == "enum":
        size = draw(st.integers(1, 2))
        members = draw(st.lists(st.sampled_from(["a", "b", "dé", "x" * 20]), max_size=4, unique=True))
        col = _column(name, T.ENUM, size=size, enum_values=[""] + members if members else None)
        return col, st.integers(0, len(members) + 1).map(lambda n: n.to_bytes(size, "little")), False
    if kind == "set":
        size = draw(st.integers(1, 8))
        members = draw(st.lists(st.sampled_from(["a", "b", "c", "dé", "e f"]), max_size=5, unique=True))
        col = _column(name, T.SET, size=size, set_values=members or None)
        return col, st.binary(min_size=size, max_size=size), False
    if kind == "bit":
        bits = draw(st.integers(1, 64))
        col = _column(name, T.BIT, bits=bits, bytes=(bits + 7) // 8)
        valid = st.integers(0, 2**bits - 1).map(lambda v: v.to_bytes(col.bytes, "big"))
        return col, valid | st.binary(min_size=col.bytes, max_size=col.bytes), False
    if kind == "decimal":
        precision = draw(st.integers(1, 65))
        scale = draw(st.integers(0, min(precision, 38)))  # MariaDB: up to 38
        col = _column(name, T.NEWDECIMAL, precision=precision, decimals=scale)
        size = len(_decimal_bytes(precision, scale, 0))
        valid = st.integers(-(10**precision - 1), 10**precision - 1).map(lambda n: _decimal_bytes(precision, scale, n))
        return col, valid | st.just(b"\x7f" + b"\xff" * (size - 1)) | st.binary(min_size=size, max_size=size), False
    if kind == "date":
        return _column(name, T.DATE), st.binary(min_size=3, max_size=3), False
    fsp = draw(st.integers(0, 6))
    size = {"datetime2": 5, "timestamp2": 4, "time2": 3}[kind] + (fsp + 1) // 2
    t = {"datetime2": T.DATETIME2, "timestamp2": T.TIMESTAMP2, "time2": T.TIME2}[kind]
    values = st.binary(min_size=size, max_size=size)
    if kind == "datetime2":  # mostly valid: the sign bit set
        values = values.map(lambda b: bytes([b[0] | 0x80]) + b[1:]) | values
    return _column(name, t, fsp=fsp), values, False


@st.composite
def tables(draw):
    """(columns, json names, row images bytes, number of rows)"""
    n = draw(st.integers(1, 12))
    cols, strategies, json = [], [], set()
    for i in range(n):
        col, values, is_json = draw(columns(i))
        cols.append(col)
        strategies.append(values)
        if is_json:
            json.add(col.name)
    if draw(st.booleans()):
        for k in draw(st.lists(st.integers(0, n - 1), max_size=2, unique=True)):
            cols[k].is_primary = True
    rows = draw(st.integers(1, 6) | st.just(0))
    data = bytearray()
    for _ in range(rows):
        null_rate = draw(st.sampled_from([0.0, 0.3, 1.0]))
        nulls = [bool(null_rate) and draw(st.floats(0, 1)) < null_rate for _ in range(n)]
        bitmap = sum(1 << i for i, null in enumerate(nulls) if null)
        if draw(st.booleans()):  # the server leaves the unused high bits set
            bitmap |= ((1 << ((n + 7) // 8 * 8)) - 1) ^ ((1 << n) - 1)
        data += bitmap.to_bytes((n + 7) // 8, "little")
        for null, values in zip(nulls, strategies):
            if not null:
                data += draw(values)
    return cols, frozenset(json), bytes(data), rows


def typed(value):
    """The value with every type spelled out (1 == 1.0 == True in Python), floats by their bits."""
    if isinstance(value, float):
        return "float", struct.pack("<d", value) if not math.isnan(value) else "nan"
    if isinstance(value, dict):
        return "dict", [(k, typed(v)) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [typed(v) for v in value]
    if isinstance(value, ChangeEvent):
        return "event", [(name, typed(getattr(value, name))) for name in ChangeEvent.__slots__]
    return type(value).__name__, value


def _outcome(call):
    try:
        return "ok", typed(call())
    except Exception as exc:  # the same exception both ways
        return "error", type(exc).__name__


def _calls(compiled: dict, d: bytes, p: int, end: int, first: int):
    base = {"connector": "mysql", "name": "s", "db": "db", "table": "t", "file": "f", "pos": 4, "row": 0,
            "gtid": "0-1-2", "server_id": 1, "ts_ms": 5}
    out = {}
    out["images"] = _outcome(lambda: compiled["images"](d, p, end))
    out["pairs"] = _outcome(lambda: compiled["pairs"](d, p, end))

    def emit(op: str):
        events: list = []
        return compiled[f"emit_{op}"](d, p, end, first, 7, "0-1-2:", base, 1234, "db.t", 99, events.append,
                                      ChangeEvent), events

    for op in "cud":
        out[op] = _outcome(lambda: emit(op))  # noqa: B023 - called at once
    return out


def _compile(cols, json: frozenset, c: bool) -> dict:
    saved = decoder_module.SPEEDUPS
    decoder_module.SPEEDUPS = c
    try:
        compiled = compile_image(cols, json, [col.name for col in cols if col.is_primary] or None)
    finally:
        decoder_module.SPEEDUPS = saved
    assert compiled is not None
    assert (compiled.get("c_decoder") is not None) == c, "every column type of the test has a C reader"
    return compiled


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(table=tables(), data=st.data())
def test_c_and_python_decoders_agree(table, data):
    cols, json, rows, count = table
    prefix = data.draw(st.binary(max_size=3))
    cut = data.draw(st.sampled_from(["whole", "whole", "short end", "short buffer", "tail"]))
    d = prefix + rows
    end = len(d)
    if cut == "short end":
        end = data.draw(st.integers(len(prefix), end))
    elif cut == "short buffer":
        d = d[:data.draw(st.integers(len(prefix), len(d)))]
        end = len(d)
    elif cut == "tail":  # bytes after end (the checksum)
        d = d + data.draw(st.binary(min_size=1, max_size=8))
    first = data.draw(st.sampled_from([0, 0, 1, 3]))
    c = _calls(_compile(cols, json, True), d, len(prefix), end, first)
    python = _calls(_compile(cols, json, False), d, len(prefix), end, first)
    assert c == python


def test_c_reads_valid_images_itself():
    """Valid images are decoded by C, not handed to the Python functions."""
    cols = [_column("id", T.LONGLONG, is_primary=True), _column("customer_id", T.LONGLONG),
            _column("status", T.VARCHAR, max_length=80, character_set_name="utf8mb4"),
            _column("amount", T.NEWDECIMAL, precision=12, decimals=2),
            _column("note", T.VARCHAR, max_length=800, character_set_name="utf8mb4"),
            _column("created_at", T.DATETIME2, fsp=0), _column("doc", T.BLOB, length_size=4,
                                                                character_set_name="utf8mb4")]
    row = (b"\x00" + struct.pack("<qq", 1, 42) + _length(1, b"new") + _decimal_bytes(12, 2, -12345)
           + _length(2, "é".encode() * 10) + _datetime2(2026, 11, 25, 17, 16, 27) + _length(4, b"null"))
    calls: list = []
    specs = tuple(decoder_module._c_spec(col, frozenset({"doc"})) for col in cols)
    fast = _crows.Decoder(specs, (0,), decoder_module._json, float32,
                          tuple((lambda *a, k=k: calls.append(k)) for k in range(5)), ChangeEvent)
    events: list = []
    base = {"row": 0}
    assert fast.emit_c(row * 3, 0, len(row) * 3, 1, 10, "p:", base, 5, "db.orders", 7, events.append, ChangeEvent) == 3
    assert calls == []
    assert [e.id for e in events] == ["p:11", "p:12"]
    e = events[0]
    assert e.after == {"id": 1, "customer_id": 42, "status": "new", "amount": "-123.45", "note": "é" * 10,
                       "created_at": "2026-11-25T17:16:27", "doc": None}
    assert e.key == {"id": 1} and e.op == "c" and e.before is None and e.table == "db.orders" and e.position == 7
    assert e.source == {"row": 1, "json_null": ["doc"]} and base == {"row": 0}
    assert fast.emit_c(row[:-1], 0, len(row) - 1, 0, 10, "p:", base, 5, "db.orders", 7, events.append,
                       ChangeEvent) is None and calls == [2]  # cut short: the generated emit_c


def test_pure_python_switch(monkeypatch):
    assert decoder_module.SPEEDUPS == (not os.environ.get("CDC_PURE_PYTHON"))
    code = "from cdc.sources.mysql import decoder; print(decoder.SPEEDUPS, decoder._crows is not None)"
    env = {**os.environ, "CDC_PURE_PYTHON": "1"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "True"]  # built, and off
    cols = [_column("id", T.LONG, is_primary=True)]
    monkeypatch.setattr(decoder_module, "SPEEDUPS", False)
    assert TableDecoder(cols).c_decoder is None
    monkeypatch.setattr(decoder_module, "SPEEDUPS", True)
    assert TableDecoder(cols).c_decoder is not None
    assert TableDecoder(cols + [_column("g", T.GEOMETRY, length_size=4)]).c_decoder is None  # no C reader


def test_no_reference_leaks():
    """A million rows through every method: the RSS stays flat (a leak of one object a row
    is 50+ MB)."""
    cols = [_column("id", T.LONGLONG, is_primary=True), _column("s", T.VARCHAR, max_length=80,
                                                                   character_set_name="utf8mb4"),
            _column("amount", T.NEWDECIMAL, precision=12, decimals=2), _column("t", T.DATETIME2, fsp=3),
            _column("j", T.BLOB, length_size=2, character_set_name="utf8mb4"), _column("f", T.FLOAT)]
    row = (b"\x00" + struct.pack("<q", 1) + _length(1, b"status") + _decimal_bytes(12, 2, 12345)
           + _datetime2(2026, 11, 25, 17, 16, 27) + b"\x01\x02" + _length(2, b"null") + struct.pack("<f", 1.1))
    rows = row * 100
    fast = _compile(cols, frozenset({"j"}), True)["c_decoder"]
    base = {"row": 0}
    now, table, pos, prefix = 10**15, "db." + "t" * 20, 10**16, "p" * 10 + ":"
    args = (base, now, table, pos)

    def run(times: int) -> None:
        for k in range(times):
            events: list = []
            fast.emit_c(rows, 0, len(rows), 0, k, prefix, base, now, table, pos, events.append, ChangeEvent)
            fast.emit_u(rows, 0, len(rows), 0, k, prefix, base, now, table, pos, events.append, ChangeEvent)
            fast.images(rows, 0, len(rows))
            fast.pairs(rows, 0, len(rows))
            # cut short: the generated function decodes it
            fast.emit_d(rows, 0, len(rows) - 1, 0, k, prefix, base, now, table, pos, events.append, ChangeEvent)

    run(1)
    counts = [sys.getrefcount(a) for a in args]
    run(10)
    assert [sys.getrefcount(a) for a in args] == counts, "the arguments' references are given back"

    run(200)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(2500)  # 1,000,000 rows decoded
    gc.collect()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 8 * 1024, f"RSS grew by {grown} kB"


def test_a_rows_event_is_handed_on_whole_or_not_at_all():
    """A fake emit, for a fault a real server does not produce since latin1 reads every byte: a
    row that fails to decode after the rows before it were built.  Found by review: the generated
    Python function had appended the rows before it (and ``poll`` handed them on), the C one not."""
    from cdc.sources.mysql.source import MySQLSource

    source = MySQLSource(dsn="mysql://cdc@127.0.0.1/db", tables=["db.t"])
    source._tx = ("key", "0-1-5:", "0-1-5", 0)
    out: list = []

    def emit(*args):
        args[-1]("the first row's event")
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    with pytest.raises(UnicodeDecodeError):
        source._emit(("db.t", "db", "t", None, ["id"]), "c", 1, 4, 0, out, emit, (b"", 0, 0))
    assert out == [] and source._index == 0
