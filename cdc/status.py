"""``cdc status``: what each source's checkpoint and replication slot say."""

from __future__ import annotations

import time
from typing import Any

from .config import Config
from .errors import CdcError
from .secrets import redact

__all__ = ["source_status"]


def source_status(cfg: Config, name: str) -> dict[str, Any]:
    spec = cfg.sources[name]
    row: dict[str, Any] = {"source": name, "type": spec.type}
    try:
        store = spec.checkpoint.build()
        row["position"] = store.load()
        saved_at = store.saved_at() if hasattr(store, "saved_at") else None
        row["checkpoint_age_s"] = time.time() - saved_at if saved_at else None
        store.close()
    except CdcError as exc:
        row["error"] = redact(str(exc))
        return row
    describe = getattr(spec.factory, "describe", None)
    if describe is not None:
        try:
            row.update(describe(spec.build()))
        except Exception as exc:
            row["error"] = redact(f"{type(exc).__name__}: {exc}".strip())
    return row
