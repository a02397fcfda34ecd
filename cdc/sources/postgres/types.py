"""PostgreSQL text output -> JSON values (the README's type table).

pgoutput sends each value in the type's text form; the replication connection sets
``DateStyle=ISO``, ``IntervalStyle=iso_8601``, ``TimeZone=UTC`` and
``extra_float_digits=3`` so the text is predictable.  A converter takes the raw
bytes and returns the JSON value:

| PostgreSQL                   | JSON                                            |
|------------------------------|-------------------------------------------------|
| smallint, integer, bigint    | number                                          |
| numeric                      | string, exact (``"1234.50"``; ``"NaN"``)        |
| real, double precision       | number; ``"NaN"``, ``"Infinity"`` as strings    |
| boolean                      | true / false                                    |
| text, varchar, char, name    | string                                          |
| date                         | ``"2026-11-25"``; BC: ``"-0043-03-15"`` (ISO)   |
| time                         | ``"17:16:27.123456"``                           |
| timestamp                    | ``"2026-11-25T17:16:27.123456"``                |
| timestamptz                  | ``"2026-11-25T17:16:27.123456Z"`` (UTC)         |
| interval                     | ISO 8601 duration ``"P1Y2M3DT4H5M6S"``          |
| uuid                         | string                                          |
| json, jsonb                  | nested JSON; JSON null: None + source.json_null |
| bytea                        | base64 string                                   |
| arrays                       | JSON arrays of the element's JSON values        |
| enum, other types            | string (the type's text form)                   |
| domains                      | as their base type (a domain over int: number)  |
| generated columns            | absent (pgoutput before PostgreSQL 18)          |
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import orjson

__all__ = ["converter_for", "is_json", "parse_array"]

Converter = Callable[[bytes], object]


def _text(raw: bytes) -> str:
    return raw.decode()


def _bool(raw: bytes) -> bool:
    return raw == b"t"


def _float(raw: bytes) -> float | str:
    value = float(raw)
    return value if value - value == 0 else raw.decode()  # NaN/Infinity stay strings


def bc(text: str) -> str:
    """PostgreSQL's ``0044-03-15 BC`` as ISO 8601 (astronomical years): ``-0043-03-15``."""
    year, rest = text[:-3].split("-", 1)
    y = 1 - int(year)
    return (f"-{-y:04d}" if y < 0 else f"{y:04d}") + "-" + rest


def _date(raw: bytes) -> str:
    return raw.decode() if raw[-1] != 67 else bc(raw.decode())  # 67: the C of " BC"


def _timestamp(raw: bytes) -> str:
    return (raw.decode() if raw[-1] != 67 else bc(raw.decode())).replace(" ", "T", 1)


def _timestamptz(raw: bytes) -> str:
    text = (raw.decode() if raw[-1] != 67 else bc(raw.decode())).replace(" ", "T", 1)
    if text.endswith("+00"):
        return text[:-3] + "Z"
    return text  # infinity, or a zone other than UTC


def _bytea(raw: bytes) -> str:
    if raw[:2] == b"\\x":
        return base64.b64encode(bytes.fromhex(raw[2:].decode())).decode()
    return base64.b64encode(raw).decode()


_json = orjson.loads


def is_json(converter: Converter | None) -> bool:
    """Is this the converter of a json or jsonb column (or a domain over one)?  Its
    ``null`` is JSON null, which a row shows as None, as it shows SQL NULL."""
    return converter is _json

_SCALARS: dict[int, Converter | None] = {
    16: _bool, 17: _bytea, 20: int, 21: int, 23: int, 26: int, 700: _float, 701: _float,
    114: _json, 3802: _json, 1114: _timestamp, 1184: _timestamptz, 1082: _date,
    # text-like: None means "decode as str", the fast path
    18: None, 19: None, 25: None, 1042: None, 1043: None, 1083: None,
    1266: None, 1186: None, 2950: None, 1700: None,
}

_ARRAYS: dict[int, int] = {  # array type -> element type
    1000: 16, 1001: 17, 1005: 21, 1007: 23, 1016: 20, 1021: 700, 1022: 701, 199: 114,
    3807: 3802, 1115: 1114, 1185: 1184, 1009: 25, 1015: 1043, 1014: 1042, 1182: 1082,
    1183: 1083, 1187: 1186, 2951: 2950, 1231: 1700, 1002: 18, 1003: 19, 1028: 26,
}


def converter_for(type_oid: int, type_name: str | None = None) -> Converter | None:
    """The converter for a column, or None when the value is plain text."""
    if type_oid in _SCALARS:
        return _SCALARS[type_oid]
    element = _ARRAYS.get(type_oid)
    if element is not None or (type_name or "").startswith("_"):
        item = _SCALARS.get(element) if element is not None else None
        item = item or _text
        return lambda raw: parse_array(raw.decode(), item)
    return None


def parse_array(text: str, item: Converter) -> list:
    """Parse a PostgreSQL array literal such as ``{1,2,NULL}`` or ``{{"a b",c}}``."""
    value, end = _parse(text, 0 if text[0] == "{" else text.index("="), item)
    return value


def _parse(text: str, i: int, item: Converter) -> tuple[list, int]:
    if text[i] == "=":  # dimension decoration: [1:2]={...}
        i += 1
    assert text[i] == "{"
    i += 1
    out: list = []
    while True:
        c = text[i]
        if c == "}":
            return out, i + 1
        if c == ",":
            i += 1
            continue
        if c == "{":
            sub, i = _parse(text, i, item)
            out.append(sub)
        elif c == '"':
            j, buf = i + 1, []
            while text[j] != '"':
                if text[j] == "\\":
                    j += 1
                buf.append(text[j])
                j += 1
            out.append(item("".join(buf).encode()))
            i = j + 1
        else:
            j = i
            while text[j] not in ",}":
                j += 1
            token = text[i:j]
            out.append(None if token == "NULL" else item(token.encode()))
            i = j
