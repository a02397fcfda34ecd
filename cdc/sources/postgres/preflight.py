"""Pre-flight checks of a PostgreSQL server for logical decoding (``cdc check``):
the source's own set-up checks plus slots, WAL senders, publication rights and
slots that hold WAL back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...abc import Problem
from ...snapshot.chunk import no_key_warning
from . import setup
from .setup import quoted

if TYPE_CHECKING:
    from .source import PostgresSource

__all__ = ["problems"]

WAL_WARN_BYTES = 1 << 30  # an inactive slot holding more WAL than this is worth a warning
OPEN_TX_WARN_SECONDS = 60  # a transaction open this long would hold up creating the slot


def problems(source: PostgresSource, position: dict | None = None) -> list[Problem]:
    """Every problem with its fix; ``error`` blocks a run."""
    out: list[Problem] = []
    with setup.connect(source.dsn, source.name) as conn:
        out += [("error", p) for p in setup.check(conn, source.tables, source.name)]
        q = lambda sql, *args: conn.execute(sql, args).fetchall()  # noqa: E731
        max_slots = int(q("SHOW max_replication_slots")[0][0])
        max_senders = int(q("SHOW max_wal_senders")[0][0])
        slots = q("SELECT slot_name, active, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint,"
                  " database IS DISTINCT FROM current_database() FROM pg_replication_slots")
        mine = next((s for s in slots if s[0] == source.slot), None)
        if mine is None and len(slots) >= max_slots:
            out.append(("error", f"max_replication_slots is {max_slots} and all are used: raise it in "
                                 f"postgresql.conf and restart, or drop an unused slot"))
        senders = q("SELECT count(*) FROM pg_stat_replication")[0][0]
        if senders >= max_senders:
            out.append(("error", f"max_wal_senders is {max_senders} and {senders} are connected: raise it "
                                 f"in postgresql.conf and restart"))
        if mine is not None and mine[3]:
            out.append(("error", f"slot {source.slot} belongs to another database (slots are per server): "
                                 f"set slot: to another name for this source"))
        elif mine is not None and mine[1]:
            out.append(("warning", f"slot {source.slot} is in use by another connection: is cdc already running?"))
        if mine is None and source.create:
            out += _slot_waits_for(conn, source.slot)
        lost = setup.slot_loss(conn, source.slot, position, source.name)
        if lost and source.snapshot == "when_needed":
            out.append(("warning", f"the checkpoint at {(position or {}).get('lsn')} cannot be resumed: {lost[0]}; the "
                                   f"changes after it that cdc had not delivered are lost to cdc. With snapshot: "
                                   f"when_needed, cdc run creates the slot again and copies every table in "
                                   f"tables: again (rows deleted in the gap are not seen: docs/snapshots.md)"))
        elif lost:
            out.append(("error", lost[1]))
        out += setup.publication_problems(conn, source.publication, source.tables)
        if source.snapshot != "never":
            out += [("warning", no_key_warning(table))
                    for table in setup.tables_without_key(conn, source.tables)]
            out += [("warning", f"{table}: the user may not SELECT it, so a snapshot cannot copy its existing rows "
                                f"(the initial copy and cdc snapshot --table drop it with an ERROR; its changes are "
                                f"captured): GRANT SELECT ON {quoted(conn, table)} TO {conn.info.user}, or set "
                                f"snapshot: never on this source if only changes matter")
                    for table in setup.tables_not_readable(conn, source.tables)]
        for table, columns in setup.generated_columns(conn, source.tables).items():
            out.append(("warning", f"{table} has generated columns ({', '.join(columns)}): pgoutput does not "
                                   f"send them before PostgreSQL 18, so events lack them"))
        for slot, active, retained, _ in slots:
            if slot != source.slot and not active and (retained or 0) > WAL_WARN_BYTES:
                out.append(("warning", f"inactive slot {slot} holds {retained / 2**20:.0f} MiB of WAL: "
                                       f"SELECT pg_drop_replication_slot('{slot}') if nothing uses it"))
        out += _publication_rights(conn, source)
    return out


def _slot_waits_for(conn, slot: str) -> list[Problem]:
    """Creating a slot waits for every transaction holding a transaction id at that moment:
    the ones open for long now (a session idle in a transaction, a prepared transaction)
    would hold up ``cdc run``'s start (which names them too, while it waits)."""
    out: list[Problem] = []
    for pid, state, app, user, db, secs in conn.execute(
            "SELECT pid, state, application_name, usename, datname, extract(epoch FROM now() - xact_start)::int"
            " FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
            " AND xact_start < now() - make_interval(secs => %s) ORDER BY xact_start", (OPEN_TX_WARN_SECONDS,)):
        out.append(("warning", f"session pid {pid} ({state or 'state hidden'}, its transaction open for {secs} s, "
                               f"application {app or '?'}, user {user}, database {db}): creating replication slot "
                               f"{slot} waits for it to end, so cdc run would wait: commit or roll it back first, "
                               f"or end it (SELECT pg_terminate_backend({pid}))"))
    for gid, owner, database, secs in conn.execute(
            "SELECT gid, owner, database, extract(epoch FROM now() - prepared)::int FROM pg_prepared_xacts"
            " ORDER BY prepared"):
        out.append(("warning", f"prepared transaction {gid!r} (owner {owner}, database {database}, prepared "
                               f"{secs} s ago): creating replication slot {slot} waits for it, so cdc run would "
                               f"wait: COMMIT PREPARED or ROLLBACK PREPARED it first"))
    return out


def _publication_rights(conn, source: PostgresSource) -> list[Problem]:
    user, superuser = conn.execute(
        "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    pub = conn.execute("SELECT pg_get_userbyid(pubowner), puballtables FROM pg_publication WHERE pubname = %s",
                       (source.publication,)).fetchone()
    if superuser:
        return []
    if pub is None:
        if not source.create:
            return [("error", f"publication {source.publication} does not exist and create is false: "
                              f"CREATE PUBLICATION {quoted(conn, source.publication)} FOR TABLE "
                              f"{', '.join(quoted(conn, t) for t in source.tables)}")]
        if not conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]:
            return [("error", f"user {user} cannot create publication {source.publication}: "
                              f"GRANT CREATE ON DATABASE {quoted(conn, conn.info.dbname)} TO {quoted(conn, user)}, "
                              f"or create it as an owner")]
    elif pub[1]:
        return []
    elif not conn.execute("SELECT pg_has_role(current_user, %s, 'USAGE')", (pub[0],)).fetchone()[0]:
        have = {f"{s}.{t}" for s, t in conn.execute(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (source.publication,))}
        missing = [t for t in source.tables if t not in have]
        if missing:
            return [("error", f"publication {source.publication} (owner {pub[0]}) lacks {', '.join(missing)} "
                              f"and {user} may not alter it: ALTER PUBLICATION {quoted(conn, source.publication)} "
                              f"ADD TABLE {', '.join(quoted(conn, t) for t in missing)} as {pub[0]}")]
        return []
    out = []
    for table in source.tables:
        row = conn.execute("SELECT pg_has_role(current_user, tableowner, 'USAGE') FROM pg_tables"
                           " WHERE schemaname || '.' || tablename = %s", (table,)).fetchone()
        if row is not None and not row[0]:
            out.append(("error", f"user {user} does not own {table} so cannot add it to publication "
                                 f"{source.publication}: create the publication as the owner"))
    return out
