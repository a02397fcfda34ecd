"""``cdc dlq list CONFIG`` and ``cdc dlq replay CONFIG [--sink NAME] [--id ID]``.

Replay re-sends each parked event to the sink it failed on (a dead letter parked by
a pipeline's transforms runs through the transforms again and goes to all of the
pipeline's sinks); an entry is removed only after the sink accepted the event.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import click

from .config import Component, Config, PipelineSpec
from .deadletter import TRANSFORMS_SINK, DeadLetter, DeadLetterStore, UnsupportedStore, store_for
from .secrets import redact

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


def _entries(q: _Queue, entry_id: str | None) -> list[DeadLetter]:
    entries = [e for e in q.store.list() if e.sink == q.sink and e.pipeline in ("", q.pipeline.name)]
    if entry_id:
        entries = [e for e in entries if entry_id in (e.id, e.event.id)]
    return entries


@click.group()
def dlq() -> None:
    """Inspect and replay dead letters (events parked by on_error: dead_letter)."""


@dlq.command("list")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--sink", help="Only this sink's dead letters.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
def list_(config: str, sink: str | None, as_json: bool) -> None:
    """Show the parked events of CONFIG's dead-letter queues."""
    import orjson

    from .cli import load_or_exit
    cfg = load_or_exit(config)
    total = failed = 0
    for q in _queues(cfg, sink):
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
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--sink", help="Only this sink's dead letters.")
@click.option("--id", "entry_id", help="Only this dead letter (its id or the event id).")
def replay(config: str, sink: str | None, entry_id: str | None) -> None:
    """Re-send parked events; an entry is removed once its sink accepted it."""
    from .cli import load_or_exit
    cfg = load_or_exit(config)
    sent = failed = 0
    for q in _queues(cfg, sink):
        if q.store is None:
            click.echo(f"{q.pipeline.name} / {q.sink}: {q.problem}", err=True)
            failed += 1
            continue
        try:
            entries = _entries(q, entry_id)
        except Exception as exc:
            click.echo(f"{q.pipeline.name} / {q.sink}: cannot read: {redact(str(exc))}", err=True)
            failed += 1
            continue
        if entries:
            ok, bad = _replay(q, entries)
            sent, failed = sent + ok, failed + bad
    click.echo(f"replayed {sent}, failed {failed}")
    sys.exit(1 if failed else 0)


def _replay(q: _Queue, entries: list[DeadLetter]) -> tuple[int, int]:
    from .transforms.chain import TransformChain
    specs = q.pipeline.sinks if q.sink == TRANSFORMS_SINK else \
        [s for s in q.pipeline.sinks if s.context.name == q.sink]
    chain = TransformChain(q.pipeline.name, [(f"transforms[{i}]:{t.type}", t.build())
                                             for i, t in enumerate(q.pipeline.transforms)])
    sinks = [s.build() for s in specs]
    ok = bad = 0
    try:
        for s in sinks:
            s.open()
        for entry in entries:
            try:
                events = chain.apply([entry.event]) if q.sink == TRANSFORMS_SINK else [entry.event]
                for s in sinks:
                    if events:
                        s.write(events)
            except Exception as exc:
                bad += 1
                click.echo(f"{entry.id}: still failing: {redact(f'{type(exc).__name__}: {exc}')}", err=True)
                continue
            q.store.remove(entry.id)
            ok += 1
            click.echo(f"{entry.id}: replayed event {entry.event.id} to {q.pipeline.name}/{q.sink}")
    finally:
        for s in sinks:
            try:
                s.close()
            except Exception:
                pass
    return ok, bad
