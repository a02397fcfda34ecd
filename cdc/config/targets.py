"""Database sinks that write the same target table (``WritesTables``): each keeps its own
position, so their writes are not ordered against each other.  A warning, not an error:
shards whose keys never meet may be merged into one table on purpose."""

from __future__ import annotations

from ..abc import WritesTables
from .model import Config

__all__ = ["shared_target_tables"]


def shared_target_tables(cfg: Config, source: str | None = None) -> list[tuple[str, str]]:
    """(key path of the later sink, warning) for every pair of sinks that write the same
    target tables, one warning per pair; with ``source``, the pairs with a sink of its own."""
    writers: dict[str, str] = {}                   # "table T of H:P/D" -> the path of the first sink writing it
    shared: dict[tuple[str, str], list[str]] = {}  # (first path, later path) -> the targets both write
    names: dict[str, str] = {}                     # sink path -> name
    of_source: dict[str, str] = {}                 # sink path -> its pipeline's source
    for pipeline in cfg.pipelines.values():
        spec_source = cfg.sources.get(pipeline.source)
        if spec_source is None:
            continue
        tables = pipeline.tables if pipeline.tables is not None else spec_source.tables
        for spec in pipeline.sinks:
            try:
                sink = spec.build()
            except Exception:
                continue  # reported by the config's own checks
            if not isinstance(sink, WritesTables):
                continue
            names[spec.path], of_source[spec.path] = spec.context.name, pipeline.source
            for table in tables:
                try:
                    target = sink.target_of(table)
                except Exception:
                    continue  # a DSN that does not parse: the sink's own connection says why
                writer = writers.setdefault(target, spec.path)
                if writer != spec.path:
                    shared.setdefault((writer, spec.path), []).append(target)
    found = []
    for (first, later), targets in shared.items():
        if source is not None and source not in (of_source[first], of_source[later]):
            continue
        what = targets[0] if len(targets) == 1 else f"{len(targets)} tables ({', '.join(targets[:3])}" + \
            (", ..." if len(targets) > 3 else "") + ")"
        found.append((later, f"writes {what}, as sink {names[first]} ({first}) does: the two are not ordered "
                             f"against each other (each keeps its own position), so while one is behind it "
                             f"writes older rows over the other's newer ones, and where their events differ "
                             f"(tables, transforms) a row can stay wrong; write each table from one sink, unless "
                             f"the two never write the same key (shards merged into one table)"))
    return found
