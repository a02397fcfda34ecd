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
from ..observe.state import SourceLock, read_status
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
@click.option("--list", "list_", is_flag=True, help="List the queued and running copies.")
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
        if not any(r["id"] == cancel_id for r in _copies(cfg, source_name)):
            fail(f"source {source_name}: no snapshot {cancel_id} is queued or running (finished, cancelled or "
                 f"never requested; --list shows them; a request made a second ago may not show yet: retry)", 2)
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
                   f"{'  where ' + r['where'] if r.get('where') else ''}")


def _request(write, state_dir, source_name: str, *args):
    """Write a request file for the running ``cdc run``; a full or read-only state_dir is an error."""
    try:
        return write(state_dir, source_name, *args)
    except OSError as exc:
        fail(f"cannot write the request in {requests.request_dir(state_dir, source_name)}: {exc.strerror}; "
             f"nothing was requested: free space in (or make writable) state_dir {state_dir}, then run this again")


def _copies(cfg, source_name: str) -> list[dict]:
    """The copies queued or running (the running process's status file, else the
    checkpoint) and the requests not taken yet."""
    store = cfg.sources[source_name].checkpoint.build()
    try:
        position = store.load() or {}
    except CdcError as exc:
        fail(str(exc))
    finally:
        store.close()
    status = read_status(cfg.state_dir, source_name)
    running = alive(status)
    live = (running or {}).get("snapshot") or {}
    state = live.get("state") or position.get("snapshot") or {}
    head = "to resume" if status and not running else "running"  # to resume: by the next cdc run
    rows = [dict(e, state=head if i == 0 else "queued") for i, e in enumerate(state.get("queue", []))]
    directory = requests.request_dir(cfg.state_dir, source_name)
    if directory.is_dir():
        for path in sorted(directory.glob("*.request")):
            try:
                body = json.loads(path.read_text())
            except ValueError:
                continue
            rows.append({**body, "after": None, "rows": 0, "state": "requested"})
    totals = {t["id"] + ":" + t["table"]: t for t in live.get("tables", [])}
    for r in rows:
        t = totals.get(f"{r['id']}:{r['table']}")
        if t:
            r["total"] = t.get("total")
    return rows
