"""``cdc dlq list CONFIG`` and ``cdc dlq replay CONFIG [--sink NAME] [--id ID]``.

Replay re-sends each parked event to the sink it failed on (a dead letter parked by
a pipeline's transforms runs through the transforms again and goes to all of the
pipeline's sinks); an entry is removed only after the sink applied the event.  An
event a database mirror skips (its table's stored position is already past it) is
*superseded*: not applied, entry kept.  A sink that cannot be opened (destination
down) keeps all its entries and counts them as failed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import click

from ..abc import ReportsSkipped
from ..config import Component, Config, PipelineSpec
from ..deadletter import TRANSFORMS_SINK, DeadLetter, DeadLetterStore, UnsupportedStore, store_for
from ..observe.secrets import redact
from ..snapshot.chunk import copy_again
from .common import CONFIG, NoAnswer, answer_within, command_timeout, fail, load_or_exit

__all__ = ["dlq"]


@dataclass
class _Queue:
    pipeline: PipelineSpec
    sink: str                  # the sink name, or TRANSFORMS_SINK
    component: Component       # the dead_letter component
    store: DeadLetterStore | None
    problem: str | None = None


def _queues(cfg: Config, sink: str | None) -> list[_Queue]:
    found: dict[tuple, _Queue] = {}
    for p in cfg.pipelines.values():
        owners = [(s.context.name, s.dead_letter) for s in p.sinks if s.dead_letter is not None]
        if p.dead_letter is not None:
            owners.append((TRANSFORMS_SINK, p.dead_letter))
        for name, comp in owners:
            if sink and sink != name:
                continue
            try:
                store, problem = store_for(comp), None
            except (UnsupportedStore, ValueError) as exc:
                store, problem = None, str(exc)
            found[(p.name, name)] = _Queue(p, name, comp, store, problem)
    return list(found.values())


def _queues_or_exit(cfg: Config, sink: str | None) -> list[_Queue]:
    """The dead-letter queues (of ``sink``); a ``sink`` that has none exits 1 saying so."""
    queues = _queues(cfg, sink)
    if sink and not queues:
        with_queue = sorted({q.sink for q in _queues(cfg, None)})
        have = f"sinks with a dead-letter queue: {', '.join(with_queue)}" if with_queue else \
            "no sink of CONFIG has one (on_error: dead_letter with dead_letter: {...})"
        names = {s.context.name for p in cfg.pipelines.values() for s in p.sinks}
        what = f"sink {sink} has no dead-letter queue" if sink in names else f"no sink named {sink!r}"
        fail(f"{what} ({have})")
    if not queues:
        click.echo("no sink of CONFIG has a dead-letter queue (on_error: dead_letter with dead_letter: {...})",
                   err=True)
    return queues


def _entries(q: _Queue, entry_id: str | None) -> list[DeadLetter]:
    entries = [e for e in q.store.list() if e.sink == q.sink and e.pipeline in ("", q.pipeline.name)]
    if entry_id:
        entries = [e for e in entries if entry_id in (e.id, e.event.id)]
    return entries


@click.group()
def dlq() -> None:
    """Inspect and replay dead letters (events parked by on_error: dead_letter)."""


@dlq.command("list")
@CONFIG
@click.option("--sink", help="Only this sink's dead letters.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
def list_(config: str, sink: str | None, as_json: bool) -> None:
    """Show the parked events of CONFIG's dead-letter queues."""
    import orjson

    cfg = load_or_exit(config)
    total = failed = 0
    for q in _queues_or_exit(cfg, sink):
        if q.store is None:
            click.echo(f"{q.pipeline.name} / {q.sink}: {q.problem}", err=True)
            continue
        try:
            entries = _entries(q, None)
        except Exception as exc:  # the DLQ database is down, the file unreadable...
            click.echo(f"{q.pipeline.name} / {q.sink}: cannot read: {redact(str(exc))}", err=True)
            failed += 1
            continue
        for e in entries:
            total += 1
            if as_json:
                click.echo(orjson.dumps({"id": e.id, "sink": e.sink, "pipeline": q.pipeline.name,
                                         "error": e.error, "attempts": e.attempts,
                                         "first_failure": e.first_failure, "last_failure": e.last_failure,
                                         "event": e.event.to_dict()}).decode())
            else:
                click.echo(f"{e.id}  {q.pipeline.name}/{e.sink}  event {e.event.id} ({e.event.op} "
                           f"{e.event.table})  attempts {e.attempts}  {e.first_failure} .. {e.last_failure}")
                click.echo(f"    {redact(e.error.get('type', '') + ': ' + e.error.get('message', ''))}")
    if not as_json:
        click.echo(f"{total} dead letter(s)", err=True)
    sys.exit(1 if failed else 0)


@dlq.command()
@CONFIG
@click.option("--sink", help="Only this sink's dead letters.")
@click.option("--id", "entry_id", help="Only this dead letter (its id or the event id).")
@click.option("--drop-superseded", is_flag=True,
              help="Remove the entries a database mirror finds superseded (once their tables are copied again).")
def replay(config: str, sink: str | None, entry_id: str | None, drop_superseded: bool) -> None:
    """Re-send parked events; an entry is removed once its sink applied it.

    Exits 1 if any entry failed again, else 3 if any was superseded (a database mirror
    already holds a newer change of its table, so it was not applied) and kept, else 0."""
    cfg = load_or_exit(config)
    total = _Counts(drop_superseded=drop_superseded)
    found = 0
    for q in _queues_or_exit(cfg, sink):
        if q.store is None:
            click.echo(f"{q.pipeline.name} / {q.sink}: {q.problem}", err=True)
            total.failed += 1
            continue
        try:
            entries = _entries(q, entry_id)
        except Exception as exc:
            click.echo(f"{q.pipeline.name} / {q.sink}: cannot read: {redact(str(exc))}", err=True)
            total.failed += 1
            continue
        found += len(entries)
        if entries:
            _replay(q, entries, total)
    if entry_id and not found and not total.failed:
        fail(f"no dead letter {entry_id} is parked{' for sink ' + sink if sink else ''} (replayed already, "
             f"or never parked): `cdc dlq list {config}` shows the ids")
    for (source, table, queue), n in total.superseded_tables.items():
        click.echo(f"{n} dead letter(s) of {table} superseded: newer changes of {table} were applied after them, so "
                   f"they are not applied over those. To bring {table} in line with its source, copy it again: "
                   f"{copy_again(source, table).replace('CONFIG', config, 1)}; then remove these entries: "
                   f"cdc dlq replay {config} --sink {queue}{' --id ' + entry_id if entry_id else ''} "
                   f"--drop-superseded", err=True)
    dropped = " (dropped)" if drop_superseded and total.superseded else ""
    click.echo(f"replayed {total.sent}, superseded {total.superseded}{dropped}, failed {total.failed}")
    sys.exit(1 if total.failed else 3 if total.superseded and not drop_superseded else 0)


@dataclass
class _Counts:
    sent: int = 0
    superseded: int = 0        # kept: the sink skipped it as behind its stored position
    failed: int = 0
    drop_superseded: bool = False
    superseded_tables: dict = field(default_factory=dict)  # (source, table, queue) -> superseded entries kept


def _replay(q: _Queue, entries: list[DeadLetter], counts: _Counts) -> None:
    from ..transforms.chain import TransformChain
    where = f"{q.pipeline.name}/{q.sink}"
    specs = q.pipeline.sinks if q.sink == TRANSFORMS_SINK else \
        [s for s in q.pipeline.sinks if s.context.name == q.sink]
    sinks: list = []
    try:
        try:
            with answer_within():
                chain = TransformChain(q.pipeline.name, [(f"transforms[{i}]:{t.type}", t.build())
                                                         for i, t in enumerate(q.pipeline.transforms)])
                for spec in specs:
                    sinks.append(spec.build())
                    sinks[-1].open()
        except (Exception, NoAnswer) as exc:  # the destination is down or silent, a plugin fails to load...
            why = (f"no answer within {command_timeout():.0f} s (the server accepts the connection but does not "
                   f"answer)" if isinstance(exc, NoAnswer) else f"{type(exc).__name__}: {exc}")
            click.echo(f"{where}: cannot open: {redact(why)}; {len(entries)} dead letter(s) kept", err=True)
            counts.failed += len(entries)
            return
        for entry in entries:
            try:
                with answer_within():
                    events = chain.apply([entry.event]) if q.sink == TRANSFORMS_SINK else [entry.event]
                    superseded = []
                    for s in sinks:
                        if events:
                            s.write(events)
                            if _skipped(s, events):
                                superseded.append(s)
            except NoAnswer:
                counts.failed += len(entries) - entries.index(entry)
                click.echo(f"{entry.id}: no answer from {where} within {command_timeout():.0f} s; this and the "
                           f"next dead letter(s) of {where} kept (the event may have been applied: a next replay "
                           f"sends it again)", err=True)
                return
            except Exception as exc:
                counts.failed += 1
                click.echo(f"{entry.id}: still failing: {redact(f'{type(exc).__name__}: {exc}')}", err=True)
                continue
            if superseded:
                counts.superseded += 1
                if counts.drop_superseded:
                    try:
                        q.store.remove(entry.id)
                    except OSError as exc:
                        counts.failed += 1
                        click.echo(f"{entry.id}: cannot remove it from {exc.filename or 'the dead-letter queue'}: "
                                   f"{exc.strerror}", err=True)
                        return
                    click.echo(f"{entry.id}: superseded, dropped: event {entry.event.id} of {entry.event.table}")
                    continue
                key = (q.pipeline.source, entry.event.table, q.sink)
                counts.superseded_tables[key] = counts.superseded_tables.get(key, 0) + 1
                click.echo(f"{entry.id}: superseded: event {entry.event.id} was not applied to {where}: "
                           f"the target already holds a newer change of {entry.event.table}; dead letter kept",
                           err=True)
                continue
            try:
                q.store.remove(entry.id)
            except OSError as exc:  # e.g. the dead-letter file's disk is full
                counts.failed += 1
                click.echo(f"{entry.id}: replayed event {entry.event.id} to {where}, but cannot mark it "
                           f"removed in {exc.filename or 'the dead-letter queue'}: {exc.strerror}; it stays "
                           "listed and a next replay delivers it again. Stopping this queue", err=True)
                return
            counts.sent += 1
            click.echo(f"{entry.id}: replayed event {entry.event.id} to {where}")
    finally:
        for s in sinks:
            try:
                s.close()
            except Exception:
                pass


def _skipped(sink: object, events: list) -> bool:
    """True if ``sink`` (a database mirror) skipped one of ``events`` in its last write."""
    if not isinstance(sink, ReportsSkipped) or not sink.skipped:
        return False
    skipped = set(sink.skipped)
    return any(e.id in skipped for e in events)
