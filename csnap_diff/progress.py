"""Progress bars (tqdm, on stderr) and a byte-rate limit for the diff tools."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from tqdm import tqdm


def bar(total: int, label: str, enabled: bool | None = None, initial: int = 0) -> Any:
    """A byte progress bar with rate and ETA on stderr; ``enabled`` None = only on a tty
    (so pipes and logs stay clean), False = never."""
    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, initial=initial, desc=label, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, disable=disable, dynamic_ncols=True,
                mininterval=0.25)


class RateLimit:
    """At most ``rate`` bytes per second on average (a token bucket of one second)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate if rate and rate > 0 else None
        self._tokens = self.rate or 0.0
        self._at = time.monotonic()

    async def take(self, n: int) -> None:
        """Wait until ``n`` more bytes may go."""
        if self.rate is None:
            return
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= n
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)
