"""A per-table row decoder compiled from the TableMap metadata.

python-mysql-replication reads each value through a generic per-column reader
(~30 us a row).  Here, once per table layout, we generate one Python function
that reads a whole row image straight from the packet bytes with ``struct``,
and reuse it for every row event of that table.  Types the fast path does not
cover (MySQL's binary JSON, geometry, pre-5.6 temporal formats) make the whole
table fall back to the library's decoding, mapped by ``types.from_library``.
Both paths give the same JSON values (see ``tests/test_mysql_decoder.py``).

When the C twin of the generated functions is built (``_crows.c``, by ``setup.py``) and
every column of a table has a C reader (``_c_spec``), the hot path is the C decoder; it
hands an event it does not expect (bytes past its end...) to the generated functions.
``CDC_PURE_PYTHON=1`` turns it off (read at import).
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable

import orjson
from pymysqlreplication.constants import FIELD_TYPE as T
from pymysqlreplication.row_event import UpdateRowsEvent

from ...event import ChangeEvent
from ..speedups import PURE_PYTHON, describe
from .types import column_encoding, float32, frac, from_library

try:  # the C twin of the generated decoders (setup.py); CDC_PURE_PYTHON=1 turns it off
    from . import _crows
except ImportError:
    _crows = None  # type: ignore[assignment]

__all__ = ["TableDecoder", "compile_image", "column_encoding"]

SPEEDUPS = _crows is not None and not PURE_PYTHON


def decoder_kind() -> str:
    """Which decoder runs, for the log line of a source's start."""
    return describe(_crows is not None, SPEEDUPS, "decoding in C where a table's column types allow",
                    "about a third as fast")

_from = int.from_bytes
_STRUCTS = {T.TINY: "b", T.SHORT: "h", T.LONG: "i", T.LONGLONG: "q", T.FLOAT: "f", T.DOUBLE: "d"}
# The generated loops fill ChangeEvent's slots directly, as long as they are the ones we know.
_FAST_EVENTS = ChangeEvent.__slots__ == ("id", "op", "before", "after", "key", "source", "ts_ms",
                                         "table", "position", "destination", "message")
_DIG2BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_FSP_BYTES = (0, 1, 1, 2, 2, 3, 3)


def _fsp_reader(fsp: int) -> tuple[int, Callable[[bytes, int], int]]:
    """(bytes, read) for the fractional seconds stored after a temporal value."""
    size = _FSP_BYTES[fsp]
    if size == 0:
        return 0, lambda d, p: 0
    scale = 10 ** (6 - 2 * size)          # 1 byte: 1/100 s, 2: 1/10000 s, 3: microseconds
    return size, lambda d, p: _from(d[p:p + size], "big") * scale


def _datetime2(fsp: int) -> tuple[int, Callable]:
    fsize, fread = _fsp_reader(fsp)

    def read(d: bytes, p: int) -> str | None:
        v = _from(d[p:p + 5], "big") - 0x8000000000
        ymd, hms = v >> 17, v & 0x1FFFF
        ym, day = ymd >> 5, ymd & 31
        year, month = divmod(ym, 13)
        if not (year and month and day):
            return None  # zero date
        return (f"{year:04d}-{month:02d}-{day:02d}T{hms >> 12:02d}:{hms >> 6 & 63:02d}:"
                f"{hms & 63:02d}{frac(fread(d, p + 5))}")

    return 5 + fsize, read


def _timestamp2(fsp: int) -> tuple[int, Callable]:
    fsize, fread = _fsp_reader(fsp)
    gmtime = time.gmtime

    def read(d: bytes, p: int) -> str | None:
        secs = _from(d[p:p + 4], "big")
        if not secs:
            return None  # zero timestamp
        t = gmtime(secs)
        return (f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:{t[4]:02d}:{t[5]:02d}"
                f"{frac(fread(d, p + 4))}Z")

    return 4 + fsize, read


def _time2(fsp: int) -> tuple[int, Callable]:
    size = 3 + _FSP_BYTES[fsp]

    def read(d: bytes, p: int) -> str:
        # MySQL's my_time_packed_from_binary: 24-bit int part, then the fraction.
        intpart = _from(d[p:p + 3], "big") - 0x800000
        if size == 3:
            packed = intpart << 24
        elif size == 6:
            packed = _from(d[p:p + 6], "big") - 0x800000000000
        else:
            fracv = _from(d[p + 3:p + size], "big")
            if intpart < 0 and fracv:
                intpart += 1
                fracv -= 0x100 if size == 4 else 0x10000
            packed = (intpart << 24) + fracv * (10000 if size == 4 else 100)
        negative = packed < 0
        packed = -packed if negative else packed
        hms, micro = packed >> 24, packed & 0xFFFFFF
        hours, minutes, seconds = hms >> 12 & 0x3FF, hms >> 6 & 63, hms & 63
        return f"{'-' if negative else ''}{hours:02d}:{minutes:02d}:{seconds:02d}{frac(micro)}"

    return size, read


def _date(d: bytes, p: int) -> str | None:
    v = _from(d[p:p + 3], "little")
    year, month, day = v >> 9, v >> 5 & 15, v & 31
    if not (year and month and day):
        return None
    return f"{year:04d}-{month:02d}-{day:02d}"


def _json(text):
    try:
        return orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return text


def _decimal_code(i: int, precision: int, scale: int, env: dict) -> list[str]:
    """Inline code for DECIMAL: big-endian groups of 9 digits; the first bit is the sign
    (set: positive), and a negative value has every bit inverted."""
    intg = precision - scale
    groups = ([(_DIG2BYTES[intg % 9], intg % 9)] if intg % 9 else []) + [(4, 9)] * (intg // 9) \
        + [(4, 9)] * (scale // 9) + ([(_DIG2BYTES[scale % 9], scale % 9)] if scale % 9 else [])
    size = sum(n for n, _ in groups)
    after = [sum(digits for _, digits in groups[k + 1:]) for k in range(len(groups))]
    if all(n in (1, 2, 4) for n, _ in groups):  # one struct call reads every group
        env[f"s{i}"] = struct.Struct(">" + "".join(" BH I"[n] for n, _ in groups)).unpack_from
        names = [f"g{k}" for k in range(len(groups))]
        flip = [f"{g} ^= {(1 << n * 8) - 1}" for g, (n, _) in zip(names, groups)]
        flip[0] = f"g0 ^= {(1 << groups[0][0] * 8 - 1) - 1}"
        lines = [f"{', '.join(names)}{',' if len(names) == 1 else ''} = s{i}(d, p)",
                 f"if g0 & {1 << groups[0][0] * 8 - 1}:", f"    g0 ^= {1 << groups[0][0] * 8 - 1}",
                 "    sg = ''", "else:", *[f"    {f}" for f in flip], "    sg = '-'"]
        terms = [f"{g} * {10 ** a}" if a else g for g, a in zip(names, after)]
    else:  # 3-byte groups: read the whole value as one integer
        sign = 1 << (size * 8 - 1)
        lines = [f"x = _from(d[p:p + {size}], 'big')", f"if x & {sign}:", f"    x ^= {sign}", "    sg = ''",
                 "else:", f"    x ^= {sign - 1}", "    sg = '-'"]
        terms, shift = [], 0
        for (nbytes, _), a in reversed(list(zip(groups, after))):
            part = f"(x >> {shift} & {(1 << nbytes * 8) - 1})"
            terms.insert(0, f"{part} * {10 ** a}" if a else part)
            shift += nbytes * 8
    lines.append(f"n = {' + '.join(terms)}")
    if scale:
        lines += [f"if n >= {10 ** scale}:", "    t = str(n)",
                  f"    v{i} = f'{{sg}}{{t[:-{scale}]}}.{{t[-{scale}:]}}'",
                  "else:", f"    v{i} = f'{{sg}}0.{{n:0{scale}d}}'"]
    else:
        lines.append(f"v{i} = f'{{sg}}{{n}}'")
    return lines + [f"p += {size}"]


def _memo(i: int, size: int, lines: list[str], env: dict) -> list[str]:
    """Reuse the previous row's value when the bytes are the same (an update's after image
    repeats most of its before image; NOW() repeats in a whole transaction)."""
    env["memo"].append(i)
    return [f"k = d[p:p + {size}]", f"if k == mk{i}:", f"    v{i} = mv{i}", f"    p += {size}", "else:",
            *[f"    {line}" for line in lines], f"    mk{i} = k", f"    mv{i} = v{i}"]


def _cached(i: int, size: int, helper: Callable, env: dict) -> list[str]:
    """Temporal values repeat: remember their text by their bytes."""
    env[f"h{i}"] = helper
    env[f"c{i}"] = {}
    return _memo(i, size, [f"v{i} = c{i}.get(k)", f"if v{i} is None:", f"    v{i} = h{i}(d, p)",
                           f"    if len(c{i}) > 4096:", f"        c{i}.clear()", f"    c{i}[k] = v{i}",
                           f"p += {size}"], env)


def _column_code(i: int, col, env: dict) -> tuple[list[str], str | None] | None:
    """(lines that set ``v{i}`` from ``d`` at ``p`` and advance ``p``, struct code of a
    fixed-width number or None); None if the type has no fast reader."""
    t = col.type
    v = f"v{i}"
    if t in _STRUCTS:
        fmt = _STRUCTS[t].upper() if getattr(col, "unsigned", False) and t != T.FLOAT and t != T.DOUBLE \
            else _STRUCTS[t]
        env[f"s{i}"] = struct.Struct("<" + fmt).unpack_from
        size = struct.calcsize(fmt)
        if t == T.FLOAT:
            env["float32"] = float32
            return [f"{v} = float32(s{i}(d, p)[0])", f"p += {size}"], None
        return [f"{v} = s{i}(d, p)[0]", f"p += {size}"], fmt
    if t == T.INT24:
        signed = not getattr(col, "unsigned", False)
        return [f"{v} = _from(d[p:p + 3], 'little', signed={signed})", "p += 3"], None
    if t == T.YEAR:
        return [f"{v} = d[p] + 1900 if d[p] else None", "p += 1"], None
    if t in (T.VARCHAR, T.STRING, T.VAR_STRING, T.BLOB):
        if t == T.BLOB:
            width = col.length_size
        else:
            width = 2 if col.max_length > 255 else 1
        length = {1: "d[p]", 2: "(d[p] | d[p + 1] << 8)"}.get(width, f"_from(d[p:p + {width}], 'little')")
        encoding = column_encoding(col)
        value = f"d[p + {width}:q]"
        if encoding:
            value = f"{value}.decode({encoding!r})"
        elif t == T.STRING:  # binary(n): the binlog drops the zero padding that SELECT shows
            value = f"_b64({value}.ljust({col.max_length}, b'\\0')).decode()"
        else:
            value = f"_b64({value}).decode()"
        if col.name in env["json_names"]:
            value = f"_json({value})"
        if width == 1 or encoding is None or col.name in env["json_names"]:
            return [f"q = p + {width} + {length}", f"{v} = {value}", "p = q"], None
        # longer text: an update's after image usually repeats it; reuse the decoded value
        env["memo"].append(i)
        return [f"q = p + {width} + {length}", f"k = d[p + {width}:q]", f"if k == mk{i}:", f"    {v} = mv{i}",
                "else:", f"    {v} = k.decode({encoding!r})", f"    mk{i} = k", f"    mv{i} = {v}", "p = q"], None
    if t == T.ENUM:
        env[f"e{i}"] = col.enum_values or [""]
        index = "d[p]" if col.size == 1 else f"_from(d[p:p + {col.size}], 'little')"
        return [f"{v} = e{i}[{index}]", f"p += {col.size}"], None
    if t == T.SET:
        env[f"e{i}"] = [(1 << n, name) for n, name in enumerate(col.set_values or [])]
        return [f"m = _from(d[p:p + {col.size}], 'little')",
                f"{v} = ','.join([name for bit, name in e{i} if m & bit])", f"p += {col.size}"], None
    if t == T.BIT:
        return [f"{v} = format(_from(d[p:p + {col.bytes}], 'big'), '0{col.bits}b')",
                f"p += {col.bytes}"], None
    if t == T.NEWDECIMAL:
        lines = _decimal_code(i, col.precision, col.decimals, env)
        return _memo(i, int(lines[-1].split()[-1]), lines, env), None
    if t == T.DATETIME2:
        helper = _datetime2(col.fsp)
    elif t == T.TIMESTAMP2:
        helper = _timestamp2(col.fsp)
    elif t == T.TIME2:
        helper = _time2(col.fsp)
    elif t == T.DATE:
        helper = (3, _date)
    else:
        return None
    return _cached(i, helper[0], helper[1], env), None


# the K_* column kinds of _crows.c
(_K_I8, _K_U8, _K_I16, _K_U16, _K_I24, _K_U24, _K_I32, _K_U32, _K_I64, _K_U64, _K_FLOAT, _K_DOUBLE, _K_YEAR,
 _K_TEXT, _K_BINARY, _K_ENUM, _K_SET, _K_BIT, _K_DECIMAL, _K_DATETIME2, _K_TIMESTAMP2, _K_TIME2, _K_DATE) = range(23)
_C_INTS = {T.TINY: _K_I8, T.SHORT: _K_I16, T.INT24: _K_I24, T.LONG: _K_I32, T.LONGLONG: _K_I64}
_C_TEMPORAL = {T.DATETIME2: _K_DATETIME2, T.TIMESTAMP2: _K_TIMESTAMP2, T.TIME2: _K_TIME2}


def _c_spec(col, json_names: frozenset) -> tuple | None:
    """``(kind, name, a, b, json, obj)``: how ``_crows.c`` reads the column (the same as
    ``_column_code``), or None when it has no reader for it."""
    t = col.type
    name = col.name
    if not isinstance(name, str):
        return None
    if t in _C_INTS:
        return _C_INTS[t] + bool(getattr(col, "unsigned", False)), name, 0, 0, False, None
    if t == T.FLOAT:
        return _K_FLOAT, name, 0, 0, False, None
    if t == T.DOUBLE:
        return _K_DOUBLE, name, 0, 0, False, None
    if t == T.YEAR:
        return _K_YEAR, name, 0, 0, False, None
    if t in (T.VARCHAR, T.STRING, T.VAR_STRING, T.BLOB):
        width = col.length_size if t == T.BLOB else 2 if col.max_length > 255 else 1
        if width not in (1, 2, 3, 4):
            return None
        json = name in json_names
        encoding = column_encoding(col)
        if encoding:
            return _K_TEXT, name, width, 0, json, encoding
        return _K_BINARY, name, width, col.max_length if t == T.STRING else 0, json, None
    if t == T.ENUM:
        members = col.enum_values or [""]
        if col.size not in (1, 2) or not all(isinstance(m, str) for m in members):
            return None
        return _K_ENUM, name, col.size, 0, False, list(members)
    if t == T.SET:
        members = tuple(col.set_values or [])
        if not 1 <= col.size <= 8 or len(members) > 64 or not all(isinstance(m, str) for m in members):
            return None
        return _K_SET, name, col.size, 0, False, members
    if t == T.BIT:
        if not 1 <= col.bytes <= 8:
            return None
        return _K_BIT, name, col.bytes, col.bits, False, None
    if t == T.NEWDECIMAL:
        if not (1 <= col.precision <= 65 and 0 <= col.decimals <= min(38, col.precision)):
            return None
        return _K_DECIMAL, name, col.precision, col.decimals, False, None
    if t in _C_TEMPORAL:
        return _C_TEMPORAL[t], name, col.fsp, 0, False, None
    if t == T.DATE:
        return _K_DATE, name, 0, 0, False, None
    return None


def _c_decoder(columns: list, json_names: frozenset, key_names: list | None, env: dict):
    """The C decoder of this layout (``_crows.Decoder``), or None (no module, a column it
    cannot read, CDC_PURE_PYTHON); ``env``'s generated functions are its fallback."""
    if not SPEEDUPS or not _FAST_EVENTS:
        return None
    specs = []
    for col in columns:
        spec = _c_spec(col, json_names)
        if spec is None:
            return None
        specs.append(spec)
    positions = {col.name: i for i, col in enumerate(columns)}
    key = tuple(positions[k] for k in key_names) if key_names else ()
    try:
        return _crows.Decoder(tuple(specs), key, _json, float32,
                              (env["images"], env["pairs"], env["emit_c"], env["emit_u"], env["emit_d"]), ChangeEvent)
    except (ValueError, TypeError):  # a spec it refuses: the generated code reads the table
        return None


def _no_nulls(codes: list, env: dict) -> list[str]:
    """The code for a row without NULLs: runs of fixed-width numbers read by one struct."""
    lines: list[str] = []
    i = 0
    while i < len(codes):
        j = i
        while j < len(codes) and codes[j][1] is not None:
            j += 1
        if j - i >= 2:
            fmt = "<" + "".join(codes[k][1] for k in range(i, j))
            env[f"run{i}"] = struct.Struct(fmt).unpack_from
            lines.append(f"{', '.join(f'v{k}' for k in range(i, j))} = run{i}(d, p)")
            lines.append(f"p += {struct.calcsize(fmt)}")
            i = j
        else:
            lines += codes[i][0]
            i += 1
    return lines


def compile_image(columns: list, json_names: frozenset = frozenset(), key_names: list | None = None
                  ) -> dict | None:
    """Compiled readers for one table layout, or None when a column type has no fast reader:
    ``image(d, p) -> (row, next p)``, ``images(d, p, end) -> [row]`` and
    ``pairs(d, p, end) -> [(before, after)]`` (update events), and ``emit_c``, ``emit_u``,
    ``emit_d``, which also build the ChangeEvents (see ``TableDecoder.emit``): the C
    decoder's methods when it reads the table (then ``c_decoder`` is set), else the
    generated functions. ``json_names``: text columns holding JSON (MariaDB)."""
    env: dict = {"_from": _from, "_b64": base64.b64encode, "_json": _json, "json_names": json_names,
                 "memo": []}
    codes = []
    for i, col in enumerate(columns):
        code = _column_code(i, col, env)
        if code is None:
            return None
        codes.append(code)
    n = len(columns)
    nbytes = (n + 7) // 8
    # The server leaves the bitmap's unused high bits set (MySQL's pack_row starts from all
    # ones): without the mask, a row without NULLs never took the fast branch.
    mask = "" if n % 8 == 0 else f" & {(1 << n) - 1}"
    body = [f"nulls = _from(d[p:p + {nbytes}], 'little'){mask}" if nbytes > 1 else f"nulls = d[p]{mask}",
            f"p += {nbytes}", "if not nulls:"]
    body += [f"    {line}" for line in _no_nulls(codes, env)]
    body.append("else:")
    for i, (column_lines, _) in enumerate(codes):
        body += [f"    if nulls & {1 << i}:", f"        v{i} = None", "    else:"]
        body += [f"        {line}" for line in column_lines]
    row = "{" + ", ".join(f"{col.name!r}: v{i}" for i, col in enumerate(columns)) + "}"

    def indent(lines: list[str], depth: int) -> list[str]:
        return [" " * depth + line for line in lines]

    init = [f"    mk{i} = mv{i} = None" for i in env["memo"]]
    source = ["def image(d, p):", *init, *indent(body, 4), f"    return {row}, p",
              "def images(d, p, end):", *init, "    out = []", "    append = out.append", "    while p < end:",
              *indent(body, 8), f"        append({row})", "    return out",
              "def pairs(d, p, end):", *init, "    out = []", "    append = out.append", "    while p < end:",
              *indent(body, 8), f"        before = {row}", *indent(body, 8), f"        append((before, {row}))",
              "    return out"]
    # emit_<op>: decode and build the ChangeEvents in one loop (the source's hot path)
    positions = {col.name: i for i, col in enumerate(columns)}
    key = ("{" + ", ".join(f"{k!r}: v{positions[k]}" for k in key_names) + "}") if key_names else "None"
    head = ["    copy = base.copy", "    rowno = 0", "    while p < end:"]
    tail = ["        if rowno >= first:", "            src = copy()", "            src['row'] = rowno"]
    if _FAST_EVENTS:  # ChangeEvent's own __init__, inlined: slot stores instead of a call
        make = ("            e = new(Event); e.id = f'{prefix}{index + rowno}'; e.source = src; e.ts_ms = now_ms; "
                "e.table = table; e.position = pos; e.destination = None; e.message = None; e.key = ")
        rest = key + "; append(e)"
        ops = {"c": "e.op = 'c'; e.before = None; e.after = {row}; ",
               "d": "e.op = 'd'; e.before = {row}; e.after = None; ",
               "u": "e.op = 'u'; e.before = before; e.after = {row}; "}
        make_c, make_d, make_u = (make.replace("e.key = ", ops[op].format(row=row) + "e.key = ") for op in "cdu")
        env["new"] = ChangeEvent.__new__
    else:
        make = "            append(Event(f'{prefix}{index + rowno}', "
        rest = f"{key}, src, now_ms, table, pos))"
        make_c, make_d, make_u = (make + f"'c', None, {row}, ", make + f"'d', {row}, None, ",
                                  make + f"'u', before, {row}, ")
    args = "(d, p, end, first, index, prefix, base, now_ms, table, pos, append, Event):"
    # the after image's json columns holding JSON null (the text 'null', not a NULL bit)
    json = [(i, col.name) for i, col in enumerate(columns) if col.name in json_names]
    json_null = tail
    if json:
        bits = [f"v{i} is None and not nulls & {1 << i}" for i, _ in json]
        items = ", ".join(f"({name!r}, v{i}, {1 << i})" for i, name in json)
        json_null = [f"        if {' or '.join(bits)}:",
                     f"            jn = [n for n, v, bit in ({items},) if v is None and not nulls & bit]",
                     "        else:", "            jn = None", *tail, "            if jn:",
                     "                src['json_null'] = jn"]
    source += [f"def emit_c{args}", *init, *head, *indent(body, 8), *json_null,
               make_c + rest, "        rowno += 1", "    return rowno",
               f"def emit_d{args}", *init, *head, *indent(body, 8), *tail,
               make_d + rest, "        rowno += 1", "    return rowno",
               f"def emit_u{args}", *init, *head, *indent(body, 8), f"        before = {row}", *indent(body, 8),
               *json_null, make_u + rest, "        rowno += 1", "    return rowno"]
    exec(compile("\n".join(source), "<mysql row decoder>", "exec"), env)  # noqa: S102 - our own code
    fast = _c_decoder(columns, json_names, key_names, env)
    if fast is None:
        return env
    # a dict of its own: the C decoder holds env's functions, env does not hold it
    return {**env, "images": fast.images, "pairs": fast.pairs, "emit_c": fast.emit_c,
            "emit_u": fast.emit_u, "emit_d": fast.emit_d, "c_decoder": fast}


class TableDecoder:
    """Decodes the row events of one table layout: ``rows(ev) -> [(before, after)]``."""

    def __init__(self, columns: list, fast: bool = True, json_names=frozenset()) -> None:
        self.columns = columns
        self.names = [c.name for c in columns]
        self.key = [c.name for c in columns if c.is_primary] or None
        self.json_names = frozenset(json_names)
        compiled = compile_image(columns, self.json_names, self.key) if fast else None
        self.fast = compiled is not None
        self.c_decoder = compiled.get("c_decoder") if compiled else None  # the C decoder reads the table
        if compiled:
            self._images, self._pairs = compiled["images"], compiled["pairs"]
            self._emit = {"c": compiled["emit_c"], "u": compiled["emit_u"], "d": compiled["emit_d"]}
        self._all = bytes([0xFF] * (len(columns) // 8)) + (bytes([(1 << len(columns) % 8) - 1])
                                                          if len(columns) % 8 else b"")

    def _body(self, ev, update: bool) -> tuple[bytes, int, int] | None:
        """(buffer, start, end) of the event's row images when the fast path can read them;
        None when this event needs the library (e.g. a partial row image)."""
        if (not self.fast or ev.number_of_columns != len(self.columns)
                or ev.columns_present_bitmap != self._all
                or (update and ev.columns_present_bitmap2 != self._all)):
            return None
        wrapper = ev.packet
        packet = wrapper.packet
        p = packet._position
        return packet._data, p, p + ev.event_size - wrapper.read_bytes

    def raw_start(self, d: bytes, p: int, end: int, update: bool) -> int | None:
        """Where the row images start in a rows event's packet bytes ``d`` (``p``: after table
        id and flags); None when the fast path cannot read them (as ``_body``)."""
        if not self.fast or p >= end:
            return None
        n = d[p]
        if n >= 251:  # a longer length-coded count: not a table we compiled
            return None
        if n != len(self.columns):
            return None
        size = len(self._all)
        q = p + 1 + size
        if d[p + 1:q] != self._all:
            return None
        if update:
            if d[q:q + size] != self._all:
                return None
            q += size
        return q if q <= end else None

    def raw_emit(self, d: bytes, p: int, end: int, op: str, first: int, index: int, prefix: str, base: dict,
                 now_ms: int, table: str, pos, append) -> int:
        """``emit`` for row images at ``d[p:end]`` (checked by ``raw_start``)."""
        return self._emit[op](d, p, end, first, index, prefix, base, now_ms, table, pos, append, ChangeEvent)

    def images(self, ev) -> list | None:
        """The fast path: the rows of a write or delete event, the (before, after) pairs of
        an update event; None when this event needs the library."""
        update = ev.__class__ is UpdateRowsEvent
        body = self._body(ev, update)
        return None if body is None else (self._pairs if update else self._images)(*body)

    def emit(self, ev, op: str, first: int, index: int, prefix: str, base: dict, now_ms: int,
             table: str, pos, append) -> int | None:
        """Append a ChangeEvent for each row from the ``first`` on (id ``prefix + index + n``,
        ``source`` a copy of ``base`` with ``row``); returns the number of rows in the event,
        or None (nothing appended) when the event needs the library's decoding."""
        body = self._body(ev, op == "u")
        if body is None:
            return None
        return self._emit[op](*body, first, index, prefix, base, now_ms, table, pos, append, ChangeEvent)

    def rows(self, ev) -> list[tuple[dict | None, dict | None]]:
        """``[(before, after)]`` by the fast path when it can, else by the library."""
        rows = self.images(ev)
        if rows is None:
            return self.library_rows(ev)
        if ev.__class__ is UpdateRowsEvent:
            return rows
        if ev.event_type in (23, 30):  # WRITE_ROWS v1 / v2
            return [(None, r) for r in rows]
        return [(r, None) for r in rows]

    def library_rows(self, ev, json_null: list | None = None) -> list[tuple[dict | None, dict | None]]:
        """The library's decoding of ``ev``, as JSON values (the fallback path).  With a list
        ``json_null``, one item per row is appended to it: the after image's json columns
        holding JSON null (MariaDB's text 'null'), or None."""
        columns = self.columns
        json_names = self.json_names

        def convert(values: dict, sources: dict, nulls: list | None = None) -> dict:
            row = {c.name: from_library(c, values.get(c.name), sources.get(c.name)) for c in columns}
            for name in json_names:
                if isinstance(row.get(name), str):
                    row[name] = _json(row[name])
                    if row[name] is None and nulls is not None:
                        nulls.append(name)
            return row

        out: list[tuple[dict | None, dict | None]] = []
        for row in ev.rows:
            nulls: list | None = [] if json_null is not None else None
            if "after_values" in row:
                out.append((convert(row["before_values"], row["before_none_sources"]),
                            convert(row["after_values"], row["after_none_sources"], nulls)))
            elif ev.event_type in (23, 30):
                out.append((None, convert(row["values"], row["none_sources"], nulls)))
            else:
                out.append((convert(row["values"], row["none_sources"]), None))
            if json_null is not None:
                json_null.append(nulls or None)
        return out
