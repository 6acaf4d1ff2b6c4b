"""What the kept per-snapshot space counts cost, in process (store/usage.py).

    .venv/bin/python scripts/space_counts.py              # 100,000 copy-outs, 3 rounds
    .venv/bin/python scripts/space_counts.py --chunks 200000 --rounds 5

In-memory store, 4 KiB chunks and blocks, four live snapshots (so every copy-out's
sharemap has four bits).  Figures:

* copy-out throughput of ``origin_write`` with the counts kept, and with the
  counting hook stubbed out (median of the rounds, alternating);
* the scan after an unclean open: total time, and the longest slice of 16 leaves
  (what one background slice holds the server's loop);
* a status answer from the kept counts, and the full walk status used to do;
* close (which writes the counts into the snapshot table) and the next open, which
  takes them from there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csnapd.store import create  # noqa: E402
from csnapd.store.device import MemoryDevice  # noqa: E402
from csnapd.store.store import Store  # noqa: E402
from csnapd.store.usage import SpaceCounts  # noqa: E402
from csnapd.store.walk import snapshot_usage  # noqa: E402

CS = 4096
CACHE = 512 << 20


def _store(chunks: int) -> tuple[Store, MemoryDevice, MemoryDevice]:
    dev = MemoryDevice((chunks * 2 + 4096) * CS)
    origin = MemoryDevice(chunks * CS)
    create.create(dev, origin.size, chunk_size=CS, block_size=CS)
    s = Store.open(dev, origin, cache_size=CACHE)
    s.count_step(1)
    for i in range(4):
        s.create_snapshot(f"s{i}")
    return s, dev, origin


def copyout_rate(chunks: int, stub: bool) -> float:
    """Copy-outs per second of first-touch origin writes, 256 chunks per call."""
    real = SpaceCounts.note
    if stub:
        SpaceCounts.note = lambda self, chunk, before, after: None  # type: ignore[method-assign]
    try:
        s, _, _ = _store(chunks)
        t = time.perf_counter()
        for start in range(0, chunks, 256):
            s.origin_write([(start, min(256, chunks - start))])
        s.commit()
        return chunks / (time.perf_counter() - t)
    finally:
        SpaceCounts.note = real  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    """Print the figures (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=100_000, help="copy-outs (default 100000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    args = p.parse_args(argv)
    kept, stubbed = [], []
    for _ in range(args.rounds):
        kept.append(copyout_rate(args.chunks, False))
        stubbed.append(copyout_rate(args.chunks, True))
    a, b = statistics.median(kept), statistics.median(stubbed)
    print(f"copy-outs/s with the counts kept {a:,.0f}, hook stubbed out {b:,.0f} "
          f"({100 * (b - a) / b:+.1f}% cost)")
    s, dev, origin = _store(args.chunks)
    for start in range(0, args.chunks, 256):
        s.origin_write([(start, min(256, args.chunks - start))])
    s.commit()
    s.exmap.counts = SpaceCounts()  # as after an unclean open
    t, worst, slices = time.perf_counter(), 0.0, 0
    while True:
        t1 = time.perf_counter()
        more = s.count_step(16)
        worst, slices = max(worst, time.perf_counter() - t1), slices + 1
        if not more:
            break
    print(f"scan after an unclean open: {s.sb.exceptions:,} exceptions in "
          f"{time.perf_counter() - t:.3f} s, {slices} slices, longest {worst * 1e3:.2f} ms")
    t = time.perf_counter()
    s.space_usage()
    print(f"status from the kept counts: {(time.perf_counter() - t) * 1e6:.0f} us")
    t = time.perf_counter()
    snapshot_usage(s)
    print(f"a full walk (what status did before): {time.perf_counter() - t:.3f} s")
    t = time.perf_counter()
    s.close()
    print(f"clean close, counts written: {time.perf_counter() - t:.3f} s")
    t = time.perf_counter()
    again = Store.open(dev, origin, cache_size=CACHE)
    print(f"open of the cleanly closed store: {time.perf_counter() - t:.3f} s, counts "
          f"complete at once: {again.exmap.counts.complete}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
