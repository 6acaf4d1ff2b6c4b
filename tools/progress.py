"""Progress reporting for long tool runs (csnap-init, csnap-check).

On a terminal the bar is tqdm's (rate, elapsed and remaining time, redrawn in place).
Anywhere else (a log file, a pipe, systemd's journal) a redrawn line would be noise, so
one plain line is written at every tenth of the work: ``checking: 40% (2/5)``.
``quiet`` writes nothing at all.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


class Progress:
    """Callable ``(done, total)`` that shows progress for ``label``; call finish() at the end."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, quiet: bool = False) -> None:
        self.label, self.stream, self.quiet = label, stream, quiet
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.last_pct = -1
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.quiet or total <= 0:
            return
        done = min(done, total)
        if self.tty:
            self._draw(done, total)
            return
        pct = done * 100 // total
        if pct // 10 != self.last_pct // 10 or (pct == 100 and self.last_pct != 100):
            self.stream.write(f"{self.label}: {pct}% ({done}/{total})\n")
            self.stream.flush()
        self.last_pct = pct

    def _draw(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.label, file=self.stream, unit="step",
                            mininterval=0.1, dynamic_ncols=True, leave=True)
        elif self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def finish(self) -> None:
        """End the bar (its last state stays on screen); nothing to do off a terminal."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
