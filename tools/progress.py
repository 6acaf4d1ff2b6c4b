"""Progress reporting for long tool runs (init, check, delete).

One reporter object: on a terminal it redraws one line; otherwise it prints a
line every 10%, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Callable ``(done, total)`` that draws progress for ``label``."""

    def __init__(self, label: str, stream: TextIO = sys.stderr, quiet: bool = False) -> None:
        self.label, self.stream, self.quiet = label, stream, quiet
        self.tty = stream.isatty()
        self.last_pct = -1
        self.last_draw = 0.0
        self.start = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if self.quiet or total <= 0:
            return
        pct = min(100, done * 100 // total)
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw >= 0.1 or pct == 100:
                self.stream.write(f"\r{self.label}: {pct:3d}% ({done}/{total})")
                self.stream.flush()
                self.last_draw = now
        elif pct // 10 != self.last_pct // 10 or (pct == 100 and self.last_pct != 100):
            self.stream.write(f"{self.label}: {pct}% ({done}/{total})\n")
        self.last_pct = pct

    def finish(self) -> None:
        if self.tty and not self.quiet and self.last_pct >= 0:
            self.stream.write(f"  done in {time.monotonic() - self.start:.1f}s\n")
