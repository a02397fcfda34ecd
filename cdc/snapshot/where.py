"""A ``--where`` must be one condition: the readers put it in parentheses next to the
keyset condition (``(k) > (last) AND (where)``), so a ``)`` that closes them (``a > 1)
OR (true``) would turn the copy into an endless loop over the first chunk.  The
database's ``EXPLAIN`` accepts such text (it parses), hence this check."""

from __future__ import annotations

import re

__all__ = ["condition_problem"]

_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z_0-9]*)?\$")


def condition_problem(where: str, mysql: bool) -> str | None:
    """Why ``where`` is not one condition (None: it is), outside quotes and quoted names:
    parentheses that do not pair, a ``;``, or a comment (it would hide the rest of the
    query).  ``mysql``: MariaDB's quoting (backslash escapes, backquotes, ``#``)."""
    depth = 0
    i, n = 0, len(where)
    while i < n:
        c = where[i]
        if c in "'\"" or (mysql and c == "`"):
            # PostgreSQL: backslash escapes only in E'...'
            backslash = (c != "`") if mysql else (c == "'" and i > 0 and where[i - 1] in "eE"
                                                 and (i < 2 or not (where[i - 2].isalnum() or where[i - 2] == "_")))
            i += 1
            while i < n:
                if backslash and where[i] == "\\":
                    i += 2
                    continue
                if where[i] == c:
                    if i + 1 < n and where[i + 1] == c:  # a doubled quote
                        i += 2
                        continue
                    break
                i += 1
            if i >= n:
                return f"a {c} is not closed"
            i += 1
            continue
        if not mysql and c == "$" and (i == 0 or not (where[i - 1].isalnum() or where[i - 1] == "_")):
            m = _DOLLAR.match(where, i)
            if m:
                end = where.find(m.group(0), m.end())
                if end < 0:
                    return f"the dollar quote {m.group(0)} is not closed"
                i = end + len(m.group(0))
                continue
        if where.startswith("--", i) or where.startswith("/*", i) or (mysql and c == "#"):
            return "a comment would hide the rest of the query: leave it out"
        if c == ";":
            return "';' would end the statement: give one condition"
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return "a ')' closes a parenthesis the condition did not open: give one condition"
        i += 1
    if depth:
        return "a '(' is not closed"
    return None
