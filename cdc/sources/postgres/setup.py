"""Check a PostgreSQL server for CDC and create the publication and the slot.

Each problem is a ``SourceSetupError`` that says what to change.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ...errors import SourceConnectionError, SourceSetupError

__all__ = ["prepare", "check", "primary_keys", "connect", "quoted"]


def connect(dsn: str, source: str) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise SourceConnectionError(f"cannot connect: {str(exc).strip()}", source=source) from exc


def quoted(conn: psycopg.Connection, name: str) -> str:
    """``Sales.No Key`` -> ``"Sales"."No Key"``: fix texts a user can paste into psql as they are."""
    return sql.Identifier(*name.split(".", 1)).as_string(conn)


def check(conn: psycopg.Connection, tables: list[str], source: str) -> list[str]:
    """Every problem that blocks CDC, each with its fix (empty when ready)."""
    problems = []
    shown = conn.execute("SHOW wal_level").fetchone()
    assert shown is not None  # SHOW returns one row
    wal_level = shown[0]
    if wal_level != "logical":
        problems.append(f"wal_level is {wal_level!r}: set wal_level = logical in postgresql.conf "
                        f"(ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL")
    role = conn.execute(
        "SELECT current_user, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert role is not None  # the current user has a pg_roles row
    user, can_replicate = role
    if not can_replicate:
        problems.append(f"user {user} lacks the REPLICATION privilege: ALTER ROLE {quoted(conn, user)} "
                        f"WITH REPLICATION")
    for table in tables:
        row = conn.execute(
            "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            table.split(".", 1)).fetchone()
        if row is None:
            problems.append(f"table {table} does not exist")
        elif row[0] == "n" or (row[0] == "d" and not row[1]):
            problems.append(f"table {table} has no primary key and no REPLICA IDENTITY: add a primary key "
                            f"or ALTER TABLE {quoted(conn, table)} REPLICA IDENTITY FULL")
    return problems


def primary_keys(conn: psycopg.Connection, tables: list[str]) -> dict[str, list[str]]:
    """``schema.table`` -> its primary-key columns, in key order."""
    out = {}
    for table in tables:
        rows = conn.execute(
            "SELECT a.attname FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
            " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
            (sql.Identifier(*table.split(".", 1)).as_string(conn),)).fetchall()
        if rows:
            out[table] = [r[0] for r in rows]
    return out


def prepare(conn: psycopg.Connection, tables: list[str], publication: str, slot: str,
            source: str, create: bool = True) -> None:
    """Fail with every problem at once, then make sure the publication covers the
    tables and the slot exists.  The publication comes first: a slot must not
    start decoding before its publication exists."""
    problems = check(conn, tables, source)
    if problems:
        raise SourceSetupError("PostgreSQL is not ready for CDC:\n  - " + "\n  - ".join(problems), source=source)
    idents = [sql.Identifier(*t.split(".", 1)) for t in tables]
    exists = conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
    try:
        if not exists:
            if not create:
                raise SourceSetupError(f"publication {publication} does not exist", source=source)
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(publication), sql.SQL(", ").join(idents)))
        else:
            have = {f"{s}.{t}" for s, t in conn.execute(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))}
            pub = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s",
                               (publication,)).fetchone()
            assert pub is not None  # the publication exists (checked above)
            alltables = pub[0]
            missing = [i for t, i in zip(tables, idents) if t not in have]
            if missing and not alltables:
                conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(publication), sql.SQL(", ").join(missing)))
        slot_row = conn.execute("SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s",
                                (slot,)).fetchone()
        if slot_row is None:
            if not create:
                raise SourceSetupError(f"replication slot {slot} does not exist", source=source)
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        elif slot_row[1] != conn.info.dbname:
            raise SourceSetupError(f"replication slot {slot} belongs to database {slot_row[1]}, not "
                                   f"{conn.info.dbname}: set another slot name", source=source)
        elif slot_row[0] != "pgoutput":
            raise SourceSetupError(f"replication slot {slot} uses plugin {slot_row[0]}, not pgoutput: "
                                   f"choose another slot name", source=source)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SourceSetupError(f"not allowed to set up CDC: {str(exc).strip()} (create the publication "
                               f"as the tables' owner, or grant ownership)", source=source,
                               sqlstate=exc.sqlstate) from exc
