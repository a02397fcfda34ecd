"""``cdc snapshot``: copy a table again (or the rows matching a condition) while the
pipeline streams; list and cancel such copies.

The request goes to the running process through a file in ``state_dir`` (see
``cdc/snapshot/requests.py``): no write access to the source database is needed.
The condition is checked against the source first (``EXPLAIN`` in a read-only
transaction), so a condition that does not parse is refused here and never reaches
the running pipeline.
"""

from __future__ import annotations

import json

import click

from ..abc import Snapshottable
from ..config.layout import qualified
from ..errors import CdcError
from ..observe.state import LockHeld, SourceLock, read_status
from ..snapshot import requests
from ..snapshot.chunk import SnapshotInputError
from ..snapshot.progress import alive
from .common import SOURCE, NoAnswer, answer_within, command_timeout, fail, load_or_exit, pick_source

__all__ = ["snapshot"]


@click.command()
@click.argument("config", type=click.Path(dir_okay=False))
@SOURCE
@click.option("--table", help="The table to copy (as in the source's tables:).")
@click.option("--where", help="Only the rows matching this SQL condition.")
@click.option("--list", "list_", is_flag=True,
              help="List the copies: running, queued, requested, and taken by a cdc run that stopped.")
@click.option("--cancel", "cancel_id", help="Cancel the copy with this id.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (--list).")
def snapshot(config: str, source_name: str | None, table: str | None, where: str | None, list_: bool,
             cancel_id: str | None, as_json: bool) -> None:
    """Copy a table's rows again, interleaved with the live changes (docs/snapshots.md)."""
    cfg = load_or_exit(config)
    source_name = pick_source(cfg, source_name, config)
    spec = cfg.sources[source_name]
    if sum(bool(x) for x in (table, list_, cancel_id)) != 1:
        fail("give exactly one of --table, --list, --cancel", 2)
    if where is not None and not table:
        fail("--where goes with --table (it chooses the rows to copy)", 2)
    if as_json and not list_:
        fail("--json goes with --list", 2)
    if list_:
        _list(cfg, source_name, as_json)
        return
    if cancel_id:
        copy = next((r for r in _copies(cfg, source_name) if r["id"] == cancel_id), None)
        if copy is None:
            fail(f"source {source_name}: no snapshot {cancel_id} is queued or running (finished, cancelled or "
                 f"never requested; --list shows them; a request made a second ago may not show yet: retry)", 2)
        if copy["state"] == INTERRUPTED and _drop_interrupted(cfg, source_name, cancel_id):
            click.echo(f"source {source_name}: snapshot {cancel_id} cancelled: its request, taken by a cdc run that "
                       f"stopped before its checkpoint held the copy, is removed (the next start does not copy it)")
            return
        _request(requests.cancel, cfg.state_dir, source_name, cancel_id)
        click.echo(f"source {source_name}: cancel of snapshot {cancel_id} requested{_when(cfg, source_name)}")
        return
    assert table is not None  # exactly one of --table, --list, --cancel
    table = qualified(spec.factory, table, spec.options)
    if table not in spec.tables:
        fail(f"{table} is not a table of source {source_name} ({', '.join(spec.tables)})", 2)
    source = spec.build()
    if not isinstance(source, Snapshottable):
        fail(f"source {source_name} ({spec.type}) cannot take snapshots", 2)
    reader = source.snapshot_reader()
    try:  # the table (a primary key) and the condition, before the request reaches the pipeline
        with answer_within():
            reader.check_where(table, where if where is not None else "true")
    except SnapshotInputError as exc:  # the table or the condition
        fail(str(exc), 2)
    except CdcError as exc:  # the server: down, the password refused
        fail(f"{exc}; nothing was requested")
    except NoAnswer:
        fail(f"no answer within {command_timeout():.0f} s from source {source_name}'s server (it accepts the "
             f"connection but does not answer: hung, overloaded, or not the server expected); nothing was requested")
    finally:
        reader.close()
    snapshot_id = _request(requests.submit, cfg.state_dir, source_name, table, where)
    click.echo(f"source {source_name}: snapshot {snapshot_id} of {table} requested"
               f"{' where ' + where if where else ''}{_when(cfg, source_name)}")


def _when(cfg, source_name: str) -> str:
    """Nothing while the source runs here; else when the request is carried out."""
    if SourceLock(cfg.state_dir, source_name).held():
        return ""
    return (f"; source {source_name} is not running (on this machine, state_dir {cfg.state_dir}): the request "
            f"is carried out when `cdc run` starts it")


def _list(cfg, source_name: str, as_json: bool) -> None:
    rows = _copies(cfg, source_name)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"source {source_name}: no snapshot queued or running")
        return
    for r in rows:
        total = f" of ~{r['total']:,}" if r.get("total") else ""
        click.echo(f"{r['id']}  {r['table']}  {r['state']}  {r.get('rows', 0):,}{total} rows"
                   f"{'  after key ' + json.dumps(r['after']) if r.get('after') else ''}"
                   f"{'  where ' + r['where'] if r.get('where') else ''}"
                   f"{'  (cancel requested)' if r.get('cancel_requested') else ''}"
                   f"{'  -- ' + r['note'] if r.get('note') else ''}")


def _drop_interrupted(cfg, source_name: str, snapshot_id: str) -> bool:
    """Remove a request taken by a run that stopped, with the source's lock held (no cdc run
    takes it meanwhile) and its copy still not in the checkpoint.  False: a cdc run started,
    or the copy is in the checkpoint now; the cancel then goes as a request to the process."""
    try:
        lock = SourceLock(cfg.state_dir, source_name).acquire()
    except (LockHeld, OSError):
        return False
    try:
        again = next((r for r in _copies(cfg, source_name, locked_here=True) if r["id"] == snapshot_id), None)
        if again is None or again["state"] != INTERRUPTED:
            return False
        return requests.drop_taken(cfg.state_dir, source_name, snapshot_id)
    except OSError as exc:
        fail(f"cannot remove the request in {requests.request_dir(cfg.state_dir, source_name)}: {exc.strerror}; "
             f"nothing was cancelled: make state_dir {cfg.state_dir} writable, then run this again")
    finally:
        lock.release()


def _request(write, state_dir, source_name: str, *args):
    """Write a request file for the running ``cdc run``; a full or read-only state_dir is an error."""
    try:
        return write(state_dir, source_name, *args)
    except OSError as exc:
        fail(f"cannot write the request in {requests.request_dir(state_dir, source_name)}: {exc.strerror}; "
             f"nothing was requested: free space in (or make writable) state_dir {state_dir}, then run this again")


INTERRUPTED = "interrupted"


def _copies(cfg, source_name: str, locked_here: bool = False) -> list[dict]:
    """The copies queued or running (the running process's status file, else the
    checkpoint), the requests not taken yet, and those taken by a ``cdc run`` that stopped
    before its checkpoint held them (``interrupted``).  ``locked_here``: this command holds
    the source's lock (no cdc run of it runs here)."""
    store = cfg.sources[source_name].checkpoint.build()
    try:
        saved = store.load()
    except CdcError as exc:
        fail(str(exc))
    finally:
        store.close()
    position = saved or {}
    status = read_status(cfg.state_dir, source_name)
    running = alive(status)
    live = (running or {}).get("snapshot") or {}
    state = live.get("state") or position.get("snapshot") or {}
    head = "to resume" if status and not running else "running"  # to resume: by the next cdc run
    rows = [dict(e, state=head if i == 0 else "queued") for i, e in enumerate(state.get("queue", []))]
    listed = {r["id"] for r in rows}
    here = running is not None or (not locked_here and SourceLock(cfg.state_dir, source_name).held())
    for body in requests.taken_requests(cfg.state_dir, source_name):
        if body["id"] in listed:  # its copy is queued or running
            continue
        if here:
            note = "just taken by the running cdc run: listed as queued within a second"
        elif saved is not None:
            note = ("taken by a cdc run that stopped before its checkpoint held the copy: the next start takes it "
                    "again, and the copy starts over (--cancel removes it)")
        else:  # retake() forgets it with the checkpoint
            note = ("taken by a cdc run that stopped before it saved any checkpoint (or the checkpoint was reset "
                    "since): the next start is a first run and forgets it (with snapshot: initial, every table is "
                    "copied anyway): request it again once that run has started")
        rows.append({**body, "after": None, "rows": 0, "state": "taken" if here else INTERRUPTED, "note": note})
    for body in requests.waiting(cfg.state_dir, source_name):
        rows.append({**body, "after": None, "rows": 0, "state": "requested"})
    cancels = requests.cancels_asked(cfg.state_dir, source_name, taken=not here)
    totals = {t["id"] + ":" + t["table"]: t for t in live.get("tables", [])}
    for r in rows:
        t = totals.get(f"{r['id']}:{r['table']}")
        if t:
            r["total"] = t.get("total")
        if r["id"] in cancels:
            r["cancel_requested"] = True
    return rows
