"""Database sinks that write the same target table (``WritesTables``): each keeps its own
position, so their writes are not ordered against each other.  A warning, not an error:
shards whose keys never meet may be merged into one table on purpose."""

from __future__ import annotations

from ..abc import WritesTables
from .model import Config

__all__ = ["shared_target_tables"]


def shared_target_tables(cfg: Config) -> list[tuple[str, str]]:
    """(key path of the later sink, warning) for every target table written by two sinks."""
    writers: dict[str, str] = {}  # "table T of H:P/D" -> the sink that writes it first
    found: list[tuple[str, str]] = []
    for pipeline in cfg.pipelines.values():
        source = cfg.sources.get(pipeline.source)
        if source is None:
            continue
        tables = pipeline.tables if pipeline.tables is not None else source.tables
        for spec in pipeline.sinks:
            try:
                sink = spec.build()
            except Exception:
                continue  # reported by the config's own checks
            if not isinstance(sink, WritesTables):
                continue
            for table in tables:
                target = sink.target_of(table)
                first = writers.setdefault(target, spec.context.name)
                if first != spec.context.name:
                    found.append((spec.path, f"writes {target}, as sink {first} does: the two are not ordered "
                                             f"against each other (each keeps its own position), so while one "
                                             f"is behind it writes older rows over the other's newer ones, and "
                                             f"where their events differ (tables, transforms) a row can stay "
                                             f"wrong; write each table from one sink, unless the two never "
                                             f"write the same key (shards merged into one table)"))
    return found
