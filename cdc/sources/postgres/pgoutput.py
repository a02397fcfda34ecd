"""Decode pgoutput (protocol version 1) messages into ``ChangeEvent`` parts.

Message layouts: https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html
Every integer is big-endian.  The decoder keeps a Relation map (relation id ->
columns) that Relation messages replace, so a column added mid-stream shows up in
later events.  Tuples are decoded with ``struct.unpack_from`` over the message.
"""

from __future__ import annotations

import builtins
import functools
import struct

from ...event import UNAVAILABLE
from ..speedups import PURE_PYTHON, describe
from .types import _bool, _date, _timestamp, _timestamptz, bc, converter_for, is_json

try:  # the C twin of the generated decoders (setup.py); CDC_PURE_PYTHON=1 turns it off
    from . import _cpgoutput
except ImportError:  # installed without a C compiler
    _cpgoutput = None  # type: ignore[assignment]
SPEEDUPS = _cpgoutput is not None and not PURE_PYTHON


def decoder_kind() -> str:
    """Which decoder runs, for the log line of a source's start."""
    return describe(_cpgoutput is not None, SPEEDUPS, "decoding in C", "about half as fast")


__all__ = ["Relation", "Decoder", "PG_EPOCH_MS"]

PG_EPOCH_MS = 946_684_800_000
_i32 = struct.Struct(">i").unpack_from
_u32 = struct.Struct(">I").unpack_from
_u16 = struct.Struct(">H").unpack_from
_begin = struct.Struct(">QqI").unpack_from          # final_lsn, commit_ts, xid
_commit = struct.Struct(">BQQq").unpack_from        # flags, commit_lsn, end_lsn, commit_ts
_message_head = struct.Struct(">BQ").unpack_from    # flags, lsn
_kind_len = struct.Struct(">Bi").unpack_from        # a TupleData column: kind, length


class Relation:
    """A table as the last Relation message described it, with its compiled decoder."""

    __slots__ = ("oid", "schema", "table", "qualified", "names", "converters", "key", "identity",
                 "decode")

    def __init__(self, oid: int, schema: str, table: str, names: list[str],
                 converters: list, key: list[str], identity: str) -> None:
        self.oid = oid
        self.schema = schema
        self.table = table
        self.qualified = f"{schema}.{table}"
        self.names = names
        self.converters = converters
        self.key = key
        self.identity = identity
        self.decode = _compile(self)


_INLINE = {int: "int({})", _bool: "{} == b't'",
           # a BC date or timestamp ends in "BC" (67: C): rare, so one byte compare on the way
           _date: "({0}.decode() if {0}[-1] != 67 else _bc({0}.decode()))",
           _timestamp: "({0}.decode() if {0}[-1] != 67 else _bc({0}.decode())).replace(' ', 'T', 1)"}


# Date and time values repeat (rows written by one statement with now(), a day's orders):
# their text is converted once and kept, per relation, up to MEMO_SIZE distinct values.
_MEMO = frozenset({_date, _timestamp, _timestamptz})
MEMO_SIZE = 4096


def _compile(rel: Relation):
    """``decode(data, pos, old) -> (row, key, pos, json_null)`` for this relation: the C
    decoder when it is built (``_cpgoutput.c``), else generated Python (``_generate``)."""
    if not SPEEDUPS:
        return _generate(rel)
    codes = bytes(_C_TEXT if conv is None else _C_INT if conv is int else _C_BOOL if conv is _bool
                  else _C_MEMO if conv in _MEMO else _C_JSON if is_json(conv) else _C_CALL
                  for conv in rel.converters)
    memos: tuple[dict | None, ...] = tuple({} if conv in _MEMO else None for conv in rel.converters)
    index = {name: i for i, name in enumerate(rel.names)}

    def fallback(data: bytes, start: int, old: dict | None):  # what the C decoder does not expect
        json_null: list = []
        row, pos = Decoder.tuple(data, start, rel, old, json_null)
        return row, {k: row[k] for k in rel.key}, pos, json_null or None

    plan = (tuple(rel.names), codes, tuple(rel.converters), memos, tuple(index[k] for k in rel.key), fallback,
            UNAVAILABLE)
    if len(rel.names) != len(rel.converters):  # the C code trusts the plan
        raise ValueError(f"{rel.qualified}: {len(rel.names)} column names, {len(rel.converters)} converters")
    return functools.partial(_cpgoutput.decode, plan)


_C_TEXT, _C_INT, _C_BOOL, _C_MEMO, _C_CALL, _C_JSON = range(6)  # the CODE_* of _cpgoutput.c


def _generate(rel: Relation):
    """``decode(data, pos, old) -> (row, key, pos, json_null)``, unrolled for this
    relation's columns: one branch per column, common conversions inlined, dict literals
    at the end; about twice as fast as a loop over the columns.  ``json_null``: the json
    columns whose value is JSON ``null`` (not SQL NULL), or None; always None for a
    relation without json columns.  Falls back to ``Decoder.tuple`` when the column
    count differs, or when a short value at the very end of the buffer leaves too few
    bytes for the combined kind+length read."""
    n = len(rel.names)
    json = [i for i, conv in enumerate(rel.converters) if is_json(conv)]
    lines = ["def decode(data, pos, old, _kl=_kl, int=int):",
             "  start = pos",
             "  length = len(data)",
             "  json_null = None" if json else "",
             "  try:",
             f"    if data[pos] != {n >> 8} or data[pos + 1] != {n & 0xFF}:",
             "        raise IndexError  # not this relation's column count",
             "    pos += 2"]
    env = {"_u16": _u16, "_kl": _kind_len, "_generic": Decoder.tuple, "rel": rel, "_other": _other, "_bc": bc,
           "struct_error": struct.error}
    for i, (name, conv) in enumerate(zip(rel.names, rel.converters)):
        raw = "data[pos + 5:end]"
        if conv is None:
            value = f"{raw}.decode()"
        elif conv in _INLINE:
            value = _INLINE[conv].format(raw)
        else:
            env[f"c{i}"] = conv
            value = f"c{i}({raw})"
        lines += ["    kind, size = _kl(data, pos)",
                  "    if kind == 116:",
                  "        end = pos + 5 + size",
                  "        if size < 0 or end > length:",
                  "            raise IndexError  # Decoder.tuple says what is wrong"]
        if conv in _MEMO:
            env[f"m{i}"] = {}
            lines += [f"        k = {raw}",
                      f"        v{i} = m{i}.get(k)",
                      f"        if v{i} is None:",
                      f"            v{i} = {value.replace(raw, 'k')}",
                      f"            if len(m{i}) >= {MEMO_SIZE}:",
                      f"                m{i}.clear()",
                      f"            m{i}[k] = v{i}"]
        else:
            lines += [f"        v{i} = {value}"]
        lines += ["        pos = end"]
        if i in json:  # the text 'null': JSON null, where SQL NULL is kind 'n'
            lines += [f"        if v{i} is None:",
                      f"            json_null = [{name!r}] if json_null is None else json_null + [{name!r}]"]
        lines += [
                  "    elif kind == 110:",
                  f"        v{i} = None",
                  "        pos += 1",
                  "    else:",
                  f"        v{i}, pos = _other(data, pos, {name!r}, old)"]
    fields = ", ".join(f"{name!r}: v{i}" for i, name in enumerate(rel.names))
    index = {name: i for i, name in enumerate(rel.names)}
    key = ", ".join(f"{k!r}: v{index[k]}" for k in rel.key)
    lines += [f"    return {{{fields}}}, {{{key}}}, pos, {'json_null' if json else 'None'}",
              "  except (IndexError, struct_error):",
              "    json_null = []",
              "    row, pos = _generic(data, start, rel, old, json_null)",
              "    return row, {k: row[k] for k in rel.key}, pos, json_null or None"]
    exec("\n".join(line for line in lines if line), env)
    return env["decode"]


def _other(data: bytes, pos: int, name: str, old: dict | None):
    """An unchanged TOAST value ('u') or a binary one ('b')."""
    if data[pos] == 117:
        return (old[name] if old is not None and name in old else UNAVAILABLE), pos + 1
    n = _length(data, pos)
    return data[pos + 5:pos + 5 + n].hex(), pos + 5 + n


def _length(data: bytes, pos: int) -> int:
    """The length of the value at ``pos`` (kind, int32 length), checked against the buffer."""
    n = _i32(data, pos + 1)[0]
    if n < 0 or pos + 5 + n > len(data):
        raise struct.error(f"a value of {n} bytes at byte {pos} of {len(data)}")
    return n


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(0, pos)
    return data[pos:end].decode(), end + 1


class Decoder:
    """Stateful pgoutput decoder; ``primary_keys`` overrides the replica identity key."""

    def __init__(self, primary_keys: dict[str, list[str]] | None = None, key_lookup=None,
                 base_type=None) -> None:
        self.relations: dict[int, Relation] = {}
        self.type_names: dict[int, str] = {}
        self.primary_keys = primary_keys or {}
        self.key_lookup = key_lookup  # oid -> the primary key now (None: unknown)
        self.base_type = base_type    # a user-defined type's oid -> its base type's (domains)

    def relation(self, data: bytes) -> Relation:
        oid = _u32(data, 1)[0]
        schema, pos = _cstring(data, 5)
        table, pos = _cstring(data, pos)
        identity = chr(data[pos])
        ncols = _u16(data, pos + 1)[0]
        pos += 3
        names, converters, flagged = [], [], []
        for _ in range(ncols):
            flags = data[pos]
            name, pos = _cstring(data, pos + 1)
            type_oid = _u32(data, pos)[0]
            pos += 8  # type oid + typmod
            if type_oid >= 16384 and self.base_type is not None:  # a user-defined type: a domain?
                type_oid = self.base_type(type_oid)
            names.append(name)
            converters.append(converter_for(type_oid, self.type_names.get(type_oid)))
            if flags & 1:
                flagged.append(name)
        qualified = f"{schema}.{table}"
        if identity == "d":  # the replica identity is the primary key: the flags name it, as it is now
            key = flagged
        else:  # FULL or an index: the key is the primary key, looked up again at every Relation
            pk = self.key_lookup(oid) if self.key_lookup is not None else None
            if pk is None:
                pk = self.primary_keys.get(qualified, ())
            key = [k for k in pk if k in names] or flagged
        rel = Relation(oid, schema, table, names, converters, key, identity)
        self.relations[oid] = rel
        return rel

    def type(self, data: bytes) -> None:
        oid = _u32(data, 1)[0]
        _, pos = _cstring(data, 5)
        name, _ = _cstring(data, pos)
        self.type_names[oid] = name

    @staticmethod
    def tuple(data: bytes, pos: int, rel: Relation, old: dict | None = None,
              json_null: list | None = None) -> tuple[dict, int]:
        """Decode TupleData at ``pos``; unchanged TOAST values come from ``old`` or
        become ``UNAVAILABLE``.  Returns the row and the position after it; the json
        columns holding JSON ``null`` are appended to ``json_null`` when given."""
        ncols = _u16(data, pos)[0]
        pos += 2
        names = rel.names
        converters = rel.converters
        row = {}
        for i in range(ncols):
            kind = data[pos]
            if kind == 116:  # 't' text
                n = _length(data, pos)
                pos += 5
                conv = converters[i]
                raw = data[pos:pos + n]
                value = row[names[i]] = raw.decode() if conv is None else conv(raw)
                if value is None and json_null is not None and is_json(conv):
                    json_null.append(names[i])
                pos += n
            elif kind == 110:  # 'n' null
                row[names[i]] = None
                pos += 1
            elif kind == 117:  # 'u' unchanged TOAST
                name = names[i]
                row[name] = old[name] if old is not None and name in old else UNAVAILABLE
                pos += 1
            else:  # 'b' binary, only with the binary option, which cdc does not request
                n = _length(data, pos)
                row[names[i]] = data[pos + 5:pos + 5 + n].hex()
                pos += 5 + n
        return row, pos

    @staticmethod
    def begin(data: bytes) -> builtins.tuple[int, int, int]:
        """(final_lsn, commit time in ms since the epoch, xid)."""
        final_lsn, ts, xid = _begin(data, 1)
        return final_lsn, ts // 1000 + PG_EPOCH_MS, xid

    @staticmethod
    def commit(data: bytes) -> builtins.tuple[int, int, int]:
        """(commit_lsn, end_lsn, commit time in ms)."""
        _, commit_lsn, end_lsn, ts = _commit(data, 1)
        return commit_lsn, end_lsn, ts // 1000 + PG_EPOCH_MS

    @staticmethod
    def truncate(data: bytes) -> builtins.tuple[list[int], int]:
        """(relation ids, options: 1 cascade, 2 restart identity)."""
        n = _u32(data, 1)[0]
        options = data[5]
        return [_u32(data, 6 + 4 * i)[0] for i in range(n)], options

    @staticmethod
    def message(data: bytes) -> builtins.tuple[bool, int, str, bytes]:
        """(transactional, lsn, prefix, content) of a logical decoding message."""
        flags, lsn = _message_head(data, 1)
        prefix, pos = _cstring(data, 10)
        n = _u32(data, pos)[0]
        return bool(flags & 1), lsn, prefix, data[pos + 4:pos + 4 + n]
