"""MySQL/MariaDB binlog values -> JSON values, the same as ``cdc/sources/postgres/types.py``.

| MySQL / MariaDB                                    | JSON                                          |
|----------------------------------------------------|-----------------------------------------------|
| tinyint..bigint, signed and unsigned               | number (unsigned bigint up to 2^64-1)         |
| decimal                                            | string, exact, scale digits (``"1234.50"``)   |
| float                                              | number, shortest float32 form (``1.1``)       |
| double                                             | number                                        |
| char, varchar, text, enum                          | string                                        |
| set                                                | string, members in definition order (``"a,b"``) |
| binary(n), varbinary, blob                         | base64 string (binary(n) zero-padded to n)    |
| date                                               | ``"2026-11-25"``                              |
| datetime(n)                                        | ``"2026-11-25T17:16:27.123456"``              |
| timestamp(n)                                       | ``"2026-11-25T17:16:27.123456Z"`` (UTC)       |
| time(n)                                            | ``"17:16:27.5"``, may be negative or > 24 h   |
| year                                               | number                                        |
| json (MySQL binary json)                           | nested JSON                                   |
| json (MariaDB: a checked longtext)                 | nested JSON when the column is known as json  |
|                                                    | (JSON null: null, named in source.json_null)  |
| bit(n)                                             | string of n ``0``/``1``                       |
| geometry types                                     | ``{"wkb": base64 WKB, "srid": 4326}``         |
| zero dates (``0000-00-00``, year ``0000``)         | null                                          |
| NULL                                               | null                                          |

Fractions of seconds lose their trailing zeros, as PostgreSQL prints them.
The functions below turn the library's Python values into these JSON values
(the fallback path); ``decoder.py`` produces the same values straight from bytes.
"""

from __future__ import annotations

import base64
import codecs
import datetime
import decimal
import encodings.cp1252
import struct

from pymysqlreplication.constants import FIELD_TYPE
from pymysqlreplication.row_event import RowsEvent

__all__ = ["column_encoding", "float32", "frac", "format_time", "from_library"]

_pack_f = struct.Struct("<f").pack


# MySQL's latin1 is cp1252, except that cp1252's five undefined bytes are U+0081, U+008D,
# U+008F, U+0090 and U+009D (Python's cp1252 refuses them): registered as "mysql_latin1".
_LATIN1 = "".join(chr(i) if c == "\ufffe" else c for i, c in enumerate(encodings.cp1252.decoding_table))
_LATIN1_ENCODE = codecs.charmap_build(_LATIN1)
_LATIN1_INFO = codecs.CodecInfo(name="mysql_latin1",
                                encode=lambda text, errors="strict": codecs.charmap_encode(text, errors, _LATIN1_ENCODE),
                                decode=lambda data, errors="strict": codecs.charmap_decode(data, errors, _LATIN1))
codecs.register(lambda name: _LATIN1_INFO if name == "mysql_latin1" else None)
# The binlog carries each column's bytes in its own character set.  The library names a column's
# codec (``character_set_name``: "cp1252" for latin1, "utf16" for utf16...); where that codec
# reads the bytes otherwise: UTF-16 and UTF-32 are big-endian without a byte order mark, ucs2 is
# UTF-16's first plane (Python's "utf16"/"utf32" took them as little-endian: other characters,
# or an error), ucs2 and utf16le have no Python codec of that name (they were taken for binary
# data), and cp1252 refuses latin1's five extra bytes.
_BINLOG_CODECS = {"cp1252": "mysql_latin1", "utf16": "utf-16-be", "ucs2": "utf-16-be", "utf16le": "utf-16-le",
                  "utf32": "utf-32-be"}


def column_encoding(column) -> str | None:
    """The Python codec of a character column's binlog bytes, None for binary data."""
    name = column.character_set_name
    if name is None:
        return "utf8"
    if name in _BINLOG_CODECS:
        return _BINLOG_CODECS[name]
    encoding = RowsEvent.charset_to_encoding(name)
    try:
        codecs.lookup(encoding)
    except LookupError:
        return None
    return encoding


def float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (PostgreSQL's real)."""
    raw = _pack_f(value)
    for digits in (6, 7, 8, 9):
        candidate = float(f"{value:.{digits}g}")
        if _pack_f(candidate) == raw:
            return candidate
    return value


def frac(micro: int) -> str:
    """``.5`` for 500000 microseconds, ``""`` for none."""
    return ("." + f"{micro:06d}".rstrip("0")) if micro else ""


def format_time(negative: bool, hours: int, minutes: int, seconds: int, micro: int) -> str:
    return f"{'-' if negative else ''}{hours:02d}:{minutes:02d}:{seconds:02d}{frac(micro)}"


def _decimal(value: decimal.Decimal, scale: int) -> str:
    return f"{value:.{scale}f}"


def _timedelta(value: datetime.timedelta) -> str:
    micro = value.days * 86_400_000_000 + value.seconds * 1_000_000 + value.microseconds
    negative = micro < 0
    micro = -micro if negative else micro
    secs, micro = divmod(micro, 1_000_000)
    if negative and micro:  # the library reads -S.f as -(S + 1 - f)
        micro = 1_000_000 - micro
    return format_time(negative, secs // 3600, secs // 60 % 60, secs % 60, micro)


def _datetime(value: datetime.datetime, zone: str = "") -> str:
    return (f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:"
            f"{value.second:02d}{frac(value.microsecond)}{zone}")


def from_library(column, value, none_source: str | None = None):
    """The JSON value of one column as python-mysql-replication decoded it."""
    t = column.type
    if value is None:
        if t == FIELD_TYPE.SET and none_source == "empty set":
            return ""
        return None
    if value == "" and column_encoding(column) is None:
        value = b""  # the library decodes an empty binary value as ''
    if isinstance(value, (bytes, bytearray)):
        if t == FIELD_TYPE.GEOMETRY:  # MySQL's form: a 4-byte little-endian SRID, then WKB
            return {"wkb": base64.b64encode(bytes(value[4:])).decode(), "srid": int.from_bytes(value[:4], "little")}
        if t == FIELD_TYPE.STRING:  # binary(n): restore the zero padding the binlog drops
            value = bytes(value).ljust(column.max_length, b"\0")
        return base64.b64encode(value).decode()
    if t == FIELD_TYPE.NEWDECIMAL:
        return _decimal(value, column.decimals)
    if t == FIELD_TYPE.FLOAT:
        return float32(value)
    if t in (FIELD_TYPE.TIME, FIELD_TYPE.TIME2):
        return _timedelta(value)
    if t in (FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIMESTAMP2):
        if value.timestamp() == 0 if value.tzinfo else value == datetime.datetime(1970, 1, 1):
            return None  # 0 is MySQL's zero timestamp
        return _datetime(value, "Z")
    if t in (FIELD_TYPE.DATETIME, FIELD_TYPE.DATETIME2):
        return _datetime(value)
    if t in (FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE):
        return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    if t == FIELD_TYPE.YEAR:
        return None if value == 1900 else value  # the library reads year 0000 as 1900
    if t == FIELD_TYPE.SET:
        return ",".join(v for v in column.set_values if v in value)
    return value
