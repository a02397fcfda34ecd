"""Check a PostgreSQL server for CDC and create the publication and the slot.

Each problem is a ``SourceSetupError`` that says what to change.
"""

from __future__ import annotations

import contextlib
import logging
import os

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ...errors import PositionLostError, SourceConnectionError, SourceSetupError
from .waits import NamedWaits

__all__ = ["prepare", "check", "primary_keys", "connect", "slot_problem", "slot_loss", "publication_problems",
           "generated_columns", "missing_tables", "captured_oids", "primary_key_of", "quoted"]

log = logging.getLogger("cdc.source.postgres")
_RESET = "cdc checkpoint reset <config> --source {source}"


CONNECT_TIMEOUT = 10  # seconds, unless the DSN (or PGCONNECT_TIMEOUT) says otherwise
WAIT_WARNING_AFTER = 10.0  # seconds a set-up statement waits for other sessions before a WARNING names them


def connect(dsn: str, source: str) -> psycopg.Connection:
    params = conninfo_to_dict(dsn)
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        dsn = make_conninfo(dsn, connect_timeout=CONNECT_TIMEOUT)
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        where = f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}"
        within = params.get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT") or CONNECT_TIMEOUT
        within = max(int(within), 2) if str(within).isdigit() and int(within) > 0 else within  # libpq: 2 s at least
        raise SourceConnectionError(f"cannot connect to {where}: {str(exc).strip()} (connect_timeout {within} s)",
                                    source=source) from exc


def quoted(conn: psycopg.Connection, name: str) -> str:
    """``Sales.No Key`` -> ``"Sales"."No Key"``: fix texts a user can paste into psql as they are."""
    return sql.Identifier(*name.split(".", 1)).as_string(conn)


def check(conn: psycopg.Connection, tables: list[str], source: str, missing_ok: bool = False) -> list[str]:
    """Every problem that blocks CDC, each with its fix (empty when ready).  With
    ``missing_ok`` a table that does not exist is not a problem here (a resumed source
    first reads what the WAL still holds for it, see ``PostgresSource``)."""
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
            if not missing_ok:
                problems.append(f"table {table} does not exist")
        elif row[0] == "n" or (row[0] == "d" and not row[1]):
            problems.append(f"table {table} has no primary key and no REPLICA IDENTITY: add a primary key "
                            f"or ALTER TABLE {quoted(conn, table)} REPLICA IDENTITY FULL")
    return problems


_PRIMARY_KEY = ("SELECT a.attname FROM pg_index i"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
                " WHERE i.indrelid = %s AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)")


def primary_keys(conn: psycopg.Connection, tables: list[str]) -> dict[str, list[str]]:
    """``schema.table`` -> its primary-key columns, in key order (tables that exist)."""
    out = {}
    for table, oid in captured_oids(conn, tables).items():
        key = primary_key_of(conn, oid)
        if key:
            out[table] = key
    return out


def primary_key_of(conn: psycopg.Connection, oid: int) -> list[str]:
    """The primary-key columns of the table ``oid`` as they are now, in key order."""
    return [r[0] for r in conn.execute(_PRIMARY_KEY, (oid,)).fetchall()]


def captured_oids(conn: psycopg.Connection, tables: list[str]) -> dict[str, int]:
    """``schema.table`` -> its oid, for the tables that exist."""
    out = {}
    for table in tables:
        row = conn.execute(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')", table.split(".", 1)).fetchone()
        if row:
            out[table] = row[0]
    return out


def partitions(conn: psycopg.Connection, oids: dict[str, int]) -> dict[int, str]:
    """The oid of every partition of a captured partitioned table -> the table's name."""
    out = {}
    for table, oid in oids.items():
        for (leaf,) in conn.execute("SELECT relid FROM pg_partition_tree(%s) WHERE relid <> %s", (oid, oid)):
            out[leaf] = table
    return out


def missing_tables(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    oids = captured_oids(conn, tables)
    return [t for t in tables if t not in oids]


def slot_problem(conn: psycopg.Connection, slot: str, position: dict | None, source: str = "",
                 dropped_while_reading: bool = False) -> str | None:
    """Why the slot cannot resume ``position`` (a checkpoint), or None.  ``cdc check``
    calls this with the stored checkpoint."""
    lost = slot_loss(conn, slot, position, source, dropped_while_reading)
    return lost[1] if lost else None


def slot_loss(conn: psycopg.Connection, slot: str, position: dict | None, source: str = "",
              dropped_while_reading: bool = False) -> tuple[str, str] | None:
    """``(reason, message)`` when the slot cannot resume ``position``, else None.

    Without a position (a first run, or after ``cdc checkpoint reset``) a missing slot
    is no problem: ``create: true`` creates it.  With one, the slot must exist and must
    not start after it: otherwise the changes in between are gone, and only an operator
    (or ``snapshot: when_needed``) can decide to accept that."""
    reset = _RESET.format(source=source or "<source>")
    row = conn.execute("SELECT confirmed_flush_lsn::text, pg_wal_lsn_diff(confirmed_flush_lsn, %s::pg_lsn),"
                       " wal_status FROM pg_replication_slots WHERE slot_name = %s",
                       ((position or {}).get("lsn") or "0/0", slot)).fetchone()
    if row is not None and row[2] == "lost" and (position is not None or dropped_while_reading):
        since = f"the checkpoint at {position['lsn']}" if position else "the position this run started at"
        return (f"replication slot {slot} was invalidated (wal_status lost: it held more WAL than "
                f"max_slot_wal_keep_size allows, so PostgreSQL removed WAL it still needed)",
                f"replication slot {slot} was invalidated (wal_status lost): it held more WAL than "
                f"max_slot_wal_keep_size allows, so PostgreSQL removed WAL after {since} that cdc had not "
                f"yet read; those changes are lost to cdc. To start over from now, accepting the loss: "
                f"SELECT pg_drop_replication_slot('{slot}'), then {reset} (its first run creates the slot), "
                f"then re-snapshot the captured tables or reconcile the destinations with the database; "
                f"raise max_slot_wal_keep_size (or -1) to keep it from happening again")
    if row is None:
        if position is None and not dropped_while_reading:
            return None
        since = (f"the checkpoint at {position['lsn']}" if position
                 else "the position this run started at")
        return (f"replication slot {slot} does not exist (it was dropped)",
                f"replication slot {slot} does not exist, but cdc has read from it before (resuming from "
                f"{since}): it was dropped, so every change after {since.split(' at ')[-1]} "
                f"that cdc had not yet delivered is lost to cdc (PostgreSQL keeps WAL for a slot only "
                f"while the slot exists). cdc does not re-create it at the current position by itself. "
                f"To start over from now, accepting the loss: {reset} (its first run creates the slot), then "
                f"re-snapshot the captured tables or reconcile the destinations with the database "
                f"(snapshot: when_needed does both by itself)")
    if position is not None and row[1] is not None and row[1] > 0:
        return (f"replication slot {slot} starts at {row[0]}, after it (another reader confirmed past it, "
                f"or the checkpoint is an old copy)",
                f"replication slot {slot} starts at {row[0]}, after the checkpoint at {position['lsn']}: "
                f"the changes in between were confirmed by another reader of the slot (or the checkpoint "
                f"is an old copy), so they are lost to cdc. To go on from the slot's position, accepting "
                f"the loss: {reset}, then re-snapshot the captured tables or reconcile the destinations "
                f"(snapshot: when_needed does both by itself)")
    return None


def prepare(conn: psycopg.Connection, tables: list[str], publication: str, slot: str,
            source: str, create: bool = True, position: dict | None = None,
            dropped_while_reading: bool = False, dsn: str | None = None) -> list[str]:
    """Fail with every problem at once, then make sure the publication publishes exactly
    the tables and the slot exists.  The publication comes first: a slot must not
    start decoding before its publication exists.

    ``position`` is the checkpoint: with one, a missing slot is an error (never
    re-created here, see ``slot_problem``: ``PositionLostError``) and a missing table is not (the WAL may still
    hold its changes).  Returns the configured tables that do not exist.  With ``dsn``, a
    statement that waits for other sessions names them (``NamedWaits``)."""
    resuming = position is not None or dropped_while_reading
    problems = check(conn, tables, source, missing_ok=resuming)
    if problems:
        raise SourceSetupError("PostgreSQL is not ready for CDC:\n  - " + "\n  - ".join(problems), source=source)
    lost = slot_loss(conn, slot, position, source, dropped_while_reading)
    if lost:
        raise PositionLostError(lost[1], source=source, position=position, reason=lost[0])
    gone = missing_tables(conn, tables) if resuming else []
    present = [t for t in tables if t not in gone]
    idents = {t: sql.Identifier(*t.split(".", 1)) for t in present}
    partitioned = bool(present) and conn.execute(
        "SELECT count(*) FROM pg_class WHERE relkind = 'p' AND oid = ANY (%s::regclass[])",
        ([idents[t].as_string(conn) for t in present],)).fetchone()[0] > 0  # type: ignore[index] # count(*): one row
    exists = conn.execute("SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = %s",
                          (publication,)).fetchone()
    name = sql.Identifier(publication)
    with NamedWaits(dsn, conn.info.backend_pid, source, WAIT_WARNING_AFTER) as waits, _setup_errors(source):
        waits.step(f"{'creating' if not exists else 'updating'} publication {publication}")
        if not exists:
            if not create:
                raise SourceSetupError(f"publication {publication} does not exist", source=source)
            if not present:
                raise SourceSetupError(f"none of the tables exists: {', '.join(tables)}", source=source)
            # Partitioned tables: changes are published under the table the config names.
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = {})")
                         .format(name, sql.SQL(", ").join(idents.values()),
                                 sql.SQL("true" if partitioned else "false")))
        else:
            # A configured table that is missing may have been renamed to one the publication
            # still holds: keep that one published until the operator has changed tables:.
            _match_publication(conn, publication, present, idents, exists, partitioned, source,
                               drop_extra=not gone)
        slot_row = conn.execute("SELECT plugin, database, wal_status FROM pg_replication_slots WHERE slot_name = %s",
                                (slot,)).fetchone()
        if slot_row is not None and slot_row[2] == "lost" and create and slot_row[1] == conn.info.dbname:
            # no checkpoint (a first run, after a reset, or when_needed starting over): an
            # invalidated slot can serve nothing, and nothing read from it is owed
            waits.step(f"dropping the invalidated replication slot {slot}")
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            log.warning("source %s: replication slot %s was invalidated (wal_status lost); with no checkpoint "
                        "to resume, it was dropped to be created again", source, slot)
            slot_row = None
        if slot_row is None:
            if not create:
                raise SourceSetupError(f"replication slot {slot} does not exist (create: false): create it "
                                       f"with SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')",
                                       source=source)
            waits.step(f"creating replication slot {slot} (it waits for the transactions running now to end)")
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
            log.info("source %s: created replication slot %s", source, slot)
        elif slot_row[1] != conn.info.dbname:
            raise SourceSetupError(f"replication slot {slot} belongs to database {slot_row[1]}, not "
                                   f"{conn.info.dbname}: set another slot name", source=source)
        elif slot_row[0] != "pgoutput":
            raise SourceSetupError(f"replication slot {slot} uses plugin {slot_row[0]}, not pgoutput: "
                                   f"choose another slot name", source=source)
    return gone


@contextlib.contextmanager
def _setup_errors(source: str):
    try:
        yield
    except psycopg.errors.InsufficientPrivilege as exc:
        raise SourceSetupError(f"not allowed to set up CDC: {str(exc).strip()} (create the publication "
                               f"as the tables' owner, or grant ownership)", source=source,
                               sqlstate=exc.sqlstate) from exc


def generated_columns(conn: psycopg.Connection, tables: list[str]) -> dict[str, list[str]]:
    """``schema.table`` -> its generated columns, which pgoutput does not send before
    PostgreSQL 18 (they are absent from events).  For a ``cdc check`` warning."""
    out = {}
    for table, oid in captured_oids(conn, tables).items():
        names = [r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0"
                                            " AND NOT attisdropped AND attgenerated <> '' ORDER BY attnum", (oid,))]
        if names:
            out[table] = names
    return out


def tables_without_key(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """The captured tables without a primary key: a snapshot cannot copy them (it reads in
    key order).  For a ``cdc check`` warning."""
    oids = captured_oids(conn, tables)
    keyed = {oid for (oid,) in conn.execute("SELECT indrelid FROM pg_index WHERE indisprimary AND indrelid = ANY(%s)",
                                             (list(oids.values()),))}
    return [table for table, oid in oids.items() if oid not in keyed]


def tables_not_readable(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """The captured tables the user may not SELECT: a snapshot cannot copy them (pgoutput
    streams their changes all the same).  For a ``cdc check`` warning."""
    oids = captured_oids(conn, tables)
    denied = {oid for (oid,) in conn.execute("SELECT o FROM unnest(%s::oid[]) AS x(o)"
                                              " WHERE NOT has_table_privilege(o, 'SELECT')", (list(oids.values()),))}
    return [table for table, oid in oids.items() if oid in denied]


def publication_problems(conn: psycopg.Connection, publication: str, tables: list[str]) -> list[tuple[str, str]]:
    """What ``cdc run`` would refuse (``error``) or change (``warning``) about an existing
    publication, as (level, text); empty when it matches ``tables`` (or does not exist yet:
    ``cdc run`` creates it).  For ``cdc check``."""
    row = conn.execute("SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = %s",
                       (publication,)).fetchone()
    if row is None:
        return []
    out = []
    schemas = [r[0] for r in conn.execute(
        "SELECT n.nspname FROM pg_publication_namespace s JOIN pg_publication p ON p.oid = s.pnpubid"
        " JOIN pg_namespace n ON n.oid = s.pnnspid WHERE p.pubname = %s", (publication,))]
    if row[0] or schemas:
        what = "FOR ALL TABLES" if row[0] else "FOR TABLES IN SCHEMA " + ", ".join(schemas)
        return [("error", f"publication {publication} is {what}: it publishes tables that are not in tables: "
                          f"(DROP PUBLICATION {publication}; cdc creates one for the configured tables)")]
    have = {f"{s}.{t}" for s, t in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid"
        " JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE p.pubname = %s", (publication,))}
    extra = sorted(have - set(tables))
    if extra:
        out.append(("warning", f"publication {publication} also publishes {', '.join(extra)}, which tables: "
                               f"no longer lists: cdc run removes them from it"))
    return out


def _match_publication(conn, publication: str, tables: list[str], idents: dict, flags: tuple,
                       partitioned: bool, source: str, drop_extra: bool = True) -> None:
    """Make an existing publication publish the configured tables and no other: a table
    removed from ``tables:`` (perhaps because it holds personal data) must stop flowing."""
    alltables, viaroot = flags
    name = sql.Identifier(publication)
    have = {f"{s}.{t}": (s, t) for s, t in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid"
        " JOIN pg_class c ON c.oid = r.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE p.pubname = %s", (publication,))}
    schemas = conn.execute(
        "SELECT n.nspname FROM pg_publication_namespace s JOIN pg_publication p ON p.oid = s.pnpubid"
        " JOIN pg_namespace n ON n.oid = s.pnnspid WHERE p.pubname = %s", (publication,)).fetchall()
    if alltables or schemas:
        what = "FOR ALL TABLES" if alltables else "FOR TABLES IN SCHEMA " + ", ".join(r[0] for r in schemas)
        raise SourceSetupError(
            f"publication {publication} is {what}: it publishes tables that are not in tables:. "
            f"Drop it (DROP PUBLICATION {publication}; cdc creates one for the configured tables) or "
            f"set publication: to one that lists exactly the configured tables", source=source)
    missing = [idents[t] for t in tables if t not in have]
    if missing:
        conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(name, sql.SQL(", ").join(missing)))
    extra = sorted(set(have) - set(tables))
    if extra and not drop_extra:
        log.warning("source %s: publication %s still publishes %s (not in tables:): kept until the missing "
                    "tables are sorted out, since one may be a renamed captured table; their rows are "
                    "not emitted", source, publication, ", ".join(extra))
    elif extra:
        conn.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
            name, sql.SQL(", ").join(sql.Identifier(*have[t]) for t in extra)))
        log.warning("source %s: removed %s from publication %s: not in tables: any more; their changes are "
                    "no longer captured", source, ", ".join(extra), publication)
    if partitioned and not viaroot:
        conn.execute(sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)").format(name))
        log.info("source %s: publication %s now publishes partitions' changes under their partitioned "
                 "table (publish_via_partition_root)", source, publication)
