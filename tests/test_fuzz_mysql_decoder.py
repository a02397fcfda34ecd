"""Differential fuzz (hypothesis) of the compiled MySQL row decoder against the library:
random table schemas over every type of the MySQL type table (docs/mysql.md), random
rows with random NULL patterns, inserted, updated and deleted on a real MariaDB; every
rows event decoded by the fast path must equal the library's decoding (as
tests/test_mysql_decoder.py compares them)."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, TableMapEvent, UpdateRowsEvent, WriteRowsEvent

from cdc.sources.mysql import decoder as decoder_module
from cdc.sources.mysql.decoder import TableDecoder


@pytest.fixture(autouse=True, params=["c", "python"])
def speedups(request, monkeypatch):
    """Every test runs with the C row decoder (``_crows.c``) and with the generated Python one."""
    monkeypatch.setattr(decoder_module, "SPEEDUPS", request.param == "c")
    return request.param


CHARS = st.characters(blacklist_categories=("Cs",), max_codepoint=0x2FFFF)
TEXT = st.text(CHARS, max_size=40)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=6)


def _int(bits: int, unsigned: bool):
    return st.integers(0, 2**bits - 1) if unsigned else st.integers(-2**(bits - 1), 2**(bits - 1) - 1)


def _decimal(p: int, s: int):
    def text(n: int) -> str:  # exact: no float, no Decimal context rounding
        digits = str(abs(n)).rjust(s + 1, "0")
        return ("-" if n < 0 else "") + (f"{digits[:-s]}.{digits[-s:]}" if s else digits)
    return st.integers(-(10**p - 1), 10**p - 1).map(text)


def _fraction(fsp: int, micro: int) -> int:
    return micro - micro % 10 ** (6 - fsp)


def _time(fsp: int):
    limit = (838 * 3600 + 59 * 60 + 59) * 10**6

    def text(us: int) -> str:
        sign, us = ("-" if us < 0 else ""), abs(us)
        secs, micro = divmod(us, 10**6)
        return f"{sign}{secs // 3600}:{secs // 60 % 60:02d}:{secs % 60:02d}.{_fraction(fsp, micro):06d}"
    return st.integers(-limit, limit).map(text)


@st.composite
def column(draw, i: int):
    """(DDL type, strategy of a value, json?)"""
    kind = draw(st.sampled_from(["int", "decimal", "float", "double", "char", "varchar", "text", "enum", "set",
                                 "binary", "varbinary", "blob", "date", "datetime", "timestamp", "time", "year",
                                 "json", "bit"]))
    if kind == "int":
        name, bits = draw(st.sampled_from([("tinyint", 8), ("smallint", 16), ("mediumint", 24), ("int", 32),
                                           ("bigint", 64)]))
        unsigned = draw(st.booleans())
        return f"{name}{' unsigned' if unsigned else ''}", _int(bits, unsigned), False
    if kind == "decimal":
        p = draw(st.integers(1, 65))
        s = draw(st.integers(0, min(p, 30)))
        return f"decimal({p},{s})", _decimal(p, s), False
    if kind == "float":
        return "float", st.floats(width=32, allow_nan=False, allow_infinity=False), False
    if kind == "double":
        return "double", st.floats(allow_nan=False, allow_infinity=False), False
    if kind in ("char", "varchar"):
        n = draw(st.integers(1, 30 if kind == "char" else 400))
        return f"{kind}({n})", st.text(CHARS, max_size=min(n, 60)), False
    if kind == "text":
        return draw(st.sampled_from(["tinytext", "text", "mediumtext", "longtext"])), TEXT, False
    if kind in ("enum", "set"):
        members = draw(st.lists(st.sampled_from(["a", "b", "c", "dé", "e f", "x" * 20]), min_size=1, max_size=6,
                                unique=True))
        ddl = f"{kind}({', '.join(repr(m) for m in members)})"
        if kind == "enum":
            return ddl, st.sampled_from(members), False
        return ddl, st.lists(st.sampled_from(members), unique=True).map(",".join), False
    if kind == "binary":
        n = draw(st.integers(1, 40))
        return f"binary({n})", st.binary(max_size=n), False
    if kind == "varbinary":
        n = draw(st.integers(1, 400))
        return f"varbinary({n})", st.binary(max_size=min(n, 80)), False
    if kind == "blob":
        return draw(st.sampled_from(["tinyblob", "blob", "mediumblob", "longblob"])), st.binary(max_size=80), False
    if kind == "date":
        return "date", st.dates(dt.date(1000, 1, 1), dt.date(9999, 12, 31)).map(str), False
    if kind in ("datetime", "timestamp"):
        fsp = draw(st.integers(0, 6))
        low, high = ((dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59)) if kind == "datetime"
                     else (dt.datetime(1970, 1, 2), dt.datetime(2038, 1, 18)))
        values = st.datetimes(low, high).map(lambda d: d.replace(microsecond=_fraction(fsp, d.microsecond))
                                             .isoformat(" ", "microseconds"))
        return f"{kind}({fsp})", values, False
    if kind == "time":
        fsp = draw(st.integers(0, 6))
        return f"time({fsp})", _time(fsp), False
    if kind == "year":
        return "year", st.integers(1901, 2155), False
    if kind == "json":
        return "json", JSON.map(json.dumps), True
    n = draw(st.integers(1, 64))
    return f"bit({n})", st.integers(0, 2**n - 1), False


@st.composite
def tables(draw):
    """(column DDLs, json column names, rows, update values)"""
    n = draw(st.integers(1, 10))
    columns = [draw(column(i)) for i in range(n)]
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        null_rate = draw(st.sampled_from([0.0, 0.3, 1.0]))
        rows.append([None if null_rate and draw(st.floats(0, 1)) < null_rate else draw(strategy)
                     for _, strategy, _ in columns])
    update = [None if draw(st.booleans()) and draw(st.booleans()) else draw(strategy) for _, strategy, _ in columns]
    return columns, rows, update


def _read_rows(server, db: str, table: str, start: str, json_names: frozenset) -> list:
    """The rows events of ``table`` after the GTID state ``start``.  (The library sends MariaDB no
    file and position, so a file/position start read the server's whole binlog, every test's
    before this one: a huge event there reset the connection, and the library reconnected for ever.)"""
    stream = BinLogStreamReader(
        {"host": "127.0.0.1", "port": server.port, "user": "cdc", "password": "cdc"},
        server_id=4298, blocking=False, is_mariadb=True, auto_position=start,
        only_schemas=[db], only_tables=[table], only_events=[TableMapEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent],
        enable_logging=False)
    decoders: dict[int, TableDecoder] = {}
    out = []
    try:
        for ev in stream:
            if isinstance(ev, TableMapEvent):
                decoders[ev.table_id] = TableDecoder(ev.columns, json_names=json_names)
                continue
            decoder = decoders[ev.table_id]
            assert ev.table == table
            assert decoder.fast, [c.type for c in ev.columns]
            assert (decoder.c_decoder is not None) == decoder_module.SPEEDUPS, "C reads every type of the fuzz"
            assert decoder.images(ev) is not None, "the fast path reads this event"
            out.append((decoder.rows(ev), decoder.library_rows(ev)))
    finally:
        stream.close()
    return out


_tables = itertools.count()


@pytest.fixture(scope="module")
def fuzz_db(mariadb_server):
    name = "fuzz_decoder"
    mariadb_server.create_database(name)
    return name


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture,
                                                                HealthCheck.data_too_large])
@given(table=tables())
def test_fast_decoder_equals_the_library(mariadb_server, fuzz_db, table):
    columns, rows, update = table
    name = f"t{next(_tables)}"  # a table of its own: the stream reads only its events
    names = [f"c{i}" for i in range(len(columns))]
    json_names = frozenset(n for n, (_, _, is_json) in zip(names, columns) if is_json)
    ddl = ", ".join(f"{n} {t}" for n, (t, _, _) in zip(names, columns))
    with mariadb_server.connect(fuzz_db) as conn, conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES'")
        cur.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, {ddl}) DEFAULT CHARSET=utf8mb4")
        cur.execute("SELECT @@gtid_binlog_pos")
        start = cur.fetchone()[0]
        marks = ", ".join(["%s"] * (len(columns) + 1))
        cur.executemany(f"INSERT INTO {name} VALUES ({marks})", [[i, *row] for i, row in enumerate(rows)])
        cur.execute(f"UPDATE {name} SET {', '.join(f'{n} = %s' for n in names)} WHERE id = 0", update)
        cur.execute(f"DELETE FROM {name} WHERE id > 0")
    events = _read_rows(mariadb_server, fuzz_db, name, start, json_names)
    assert events, "rows events were read"
    for fast, library in events:
        for (fb, fa), (lb, la) in zip(fast, library):
            for ours, theirs in ((fb, lb), (fa, la)):
                diff = {k: (v, (theirs or {}).get(k)) for k, v in (ours or {}).items() if (theirs or {}).get(k) != v}
                assert ours == theirs, f"fast != library in {diff} (columns {[t for t, _, _ in columns]})"
        assert len(fast) == len(library)
    assert sum(len(fast) for fast, _ in events) >= 2 * len(rows) - 1  # inserted, deleted (an update may be a no-op)
