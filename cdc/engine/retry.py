"""``Backoff``: the one exponential backoff with jitter that every retry loop uses.

    backoff = Backoff(initial=0.5, maximum=30.0)
    delay = backoff.next()      # 0.25..0.5, then 0.5..1.0, 1..2, ... capped at 30
    backoff.reset()             # after a success
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays of ``initial * 2**n`` capped at ``maximum``, each scaled by a random
    factor in ``[1 - jitter, 1]`` so that many retriers do not retry in step."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, jitter: float = 0.5) -> None:
        if initial <= 0 or maximum < initial or not 0 <= jitter < 1:
            raise ValueError("Backoff needs 0 < initial <= maximum and 0 <= jitter < 1")
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt (and count one more failure)."""
        delay = min(self.maximum, self.initial * 2 ** min(self.attempts, 64))
        self.attempts += 1
        return delay * random.uniform(1.0 - self.jitter, 1.0) if self.jitter else delay

    def reset(self) -> None:
        self.attempts = 0
