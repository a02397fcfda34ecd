"""``memory``: keeps the position in the process (tests and throwaway runs only)."""

from __future__ import annotations

import time

__all__ = ["MemoryCheckpointStore"]


class MemoryCheckpointStore:
    def __init__(self) -> None:
        self.position: dict | None = None
        self.saves = 0
        self.saved_at_time: float | None = None

    def load(self) -> dict | None:
        return self.position

    def saved_at(self) -> float | None:
        return self.saved_at_time

    def save(self, position: dict) -> None:
        self.position = dict(position)
        self.saves += 1
        self.saved_at_time = time.time()

    def reset(self) -> None:
        self.position = None

    def close(self) -> None:
        pass
