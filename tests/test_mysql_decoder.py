"""Differential test: the compiled row decoder and the library's decoding give the same rows."""

from __future__ import annotations

import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import DeleteRowsEvent, TableMapEvent, UpdateRowsEvent, WriteRowsEvent
from test_mysql_source import ALL_ROWS, ALL_TYPES

from cdc.sources.mysql import decoder as decoder_module
from cdc.sources.mysql.decoder import TableDecoder

from mysql_helpers import db_of, execute


@pytest.fixture(autouse=True, params=["c", "python"])
def speedups(request, monkeypatch):
    """Every test runs with the C row decoder (``_crows.c``) and with the generated Python one."""
    monkeypatch.setattr(decoder_module, "SPEEDUPS", request.param == "c")
    return request.param


EDGE_ROWS = [
    # more edge values: small decimals, fractional times of every precision, multi-byte text
    "(10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 9223372036854775808, -0.000001, 0, 1.17549435e-38, 5e-324,"
    " 'ab  ', 'ñ', REPEAT('€', 100), REPEAT(x'ab', 300), x'ffffffff', x'00000000', 'ÿ',"
    " '1000-01-01', '1000-01-01 00:00:00.000001', '2000-02-29 12:34:56', '2001-09-09 01:46:40.5',"
    " '-12:34:56', '-00:00:00.001', 1901, 'small', 'a,b,c', '[1, 2, {\"x\": null}]', b'100000000001',"
    " b'1')",
    "(11, -1, 128, -1, 32768, -1, 8388608, -1, 2147483648, -1, 1, 123.456, -1, -0.1, -0.1,"
    " NULL, '', NULL, '', NULL, '', NULL, '2026-02-28', '2026-11-25 23:59:59.9', NULL,"
    " '2026-11-25 17:16:27.000001', '-838:59:59', '00:00:00.999', 2000, NULL, 'c', 'null', b'0', b'0')",
]
DECIMALS = ("CREATE TABLE decimals (id int PRIMARY KEY, a decimal(4,4), b decimal(18,9), c decimal(30,10),"
            " d decimal(2,0), e decimal(65,30), f decimal(9,2), g decimal(10,1))")
DECIMAL_ROWS = ["(1, 0.9999, 999999999.999999999, 12345678901234567890.0123456789, 99,"
                " 12345678901234567890123456789012345.123456789012345678901234567890, 1234567.89, 123456789.9)",
                "(2, -0.0001, -0.000000001, -1, -9, -0.000000000000000000000000000001, -0.01, -0.1)",
                "(3, 0, 0, 0, 0, 0, 0, 0)"]
# binary JSON (MySQL) and geometry have no fast reader: the table falls back to the library
FALLBACK = "CREATE TABLE shapes (id int PRIMARY KEY, g geometry, label varchar(10))"


def _gtid_pos(server, db: str) -> str:
    with server.connect(db) as conn, conn.cursor() as cur:
        cur.execute("SELECT @@gtid_binlog_pos")
        return cur.fetchone()[0]


def _read_all(server, db: str, start: str) -> list[tuple[str, object, object]]:
    """(table, fast rows, library rows) for every rows event of ``db`` after the GTID state ``start``
    (not the whole binlog: what other tests wrote on this server may hold an event the library
    cannot read, and it then reconnects for ever)."""
    stream = BinLogStreamReader(
        {"host": "127.0.0.1", "port": server.port, "user": "cdc", "password": "cdc"},
        server_id=4299, blocking=False, is_mariadb=True, auto_position=start, only_schemas=[db],
        only_events=[TableMapEvent, WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent], enable_logging=False)
    decoders: dict[int, TableDecoder] = {}
    out = []
    try:
        for ev in stream:
            if isinstance(ev, TableMapEvent):
                decoders[ev.table_id] = TableDecoder(ev.columns)
                continue
            decoder = decoders[ev.table_id]
            fast = decoder.rows(ev) if decoder.fast else None  # reads the bytes without consuming them
            assert decoder.fast is False or (decoder.c_decoder is not None) == decoder_module.SPEEDUPS
            out.append((ev.table, decoder.fast, fast, decoder.library_rows(ev)))
    finally:
        stream.close()
    return out


def test_fast_decoder_matches_the_library(mariadb_server, mariadb_database):
    db = db_of(mariadb_database)
    start = _gtid_pos(mariadb_server, db)
    execute(mariadb_server, db, ALL_TYPES, FALLBACK, DECIMALS)
    execute(mariadb_server, db, *["INSERT INTO all_types VALUES " + r for r in ALL_ROWS + EDGE_ROWS],
            sql_mode="")
    execute(mariadb_server, db, "INSERT INTO all_types (id) VALUES (20)",
            "UPDATE all_types SET ti = COALESCE(ti, 0) - 1, vc = CONCAT(vc, '!'), tm3 = NULL WHERE id IN (1, 3, 10, 20)",
            "DELETE FROM all_types WHERE id IN (2, 11, 20)",
            *["INSERT INTO decimals VALUES " + r for r in DECIMAL_ROWS],
            "INSERT INTO shapes VALUES (1, ST_GeomFromText('POINT(1 2)'), 'p'), (2, NULL, NULL)",
            sql_mode="")
    events = _read_all(mariadb_server, db, start)
    typed = [e for e in events if e[0] == "all_types"]
    assert len(typed) == len(ALL_ROWS) + len(EDGE_ROWS) + 3  # one event per INSERT, UPDATE, DELETE
    rows = 0
    for _table, fast_path, fast, library in typed:
        assert fast_path, "every column of all_types has a fast reader"
        assert fast == library
        rows += len(fast)
    assert rows == len(ALL_ROWS) + len(EDGE_ROWS) + 1 + 4 + 3
    decimals = [e for e in events if e[0] == "decimals"]
    assert len(decimals) == 3 and all(fast_path and fast == library for _, fast_path, fast, library in decimals)
    assert decimals[1][2][0][1]["e"] == "-0.000000000000000000000000000001"
    shapes = [e for e in events if e[0] == "shapes"]
    assert len(shapes) == 1 and shapes[0][1] is False  # geometry: library decoding
    point, empty = shapes[0][3]
    assert point[1]["label"] == "p" and set(point[1]["g"]) == {"wkb", "srid"}  # base64 WKB beside the SRID
    assert empty[1] == {"id": 2, "g": None, "label": None}
