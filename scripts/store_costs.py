"""Store-layer costs, in process: bytes written per copy-out, and per-chunk lookup time.

    .venv/bin/python scripts/store_costs.py            # both measurements
    .venv/bin/python scripts/store_costs.py --ops 8192 --json costs.json

Bytes: a 256 MiB in-memory store (4 KiB chunks and blocks, the default 8 MiB
journal, one live snapshot), first-touch origin writes of one chunk each in
sequence (as csnap-bench's first_touch_4k hands them out), each recorded as a
grant of one of 16 clients, committed every 1 and every 16 operations.  Every
byte written to the store device counts: copied data, journal, home writes of
the checkpoints the run needs, and a final checkpoint (what the run still owes).

Lookups: a tree of 65,536 exceptions (data copies skipped; all blocks cached); the time per chunk
of ``snapshot_map`` over 64-chunk ranges, of ``snapshot_lookup`` and of an
``origin_write`` of chunks that need no copy: best of seven runs, process CPU time.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from csnapd.store import create  # noqa: E402
from csnapd.store.device import AbsentDevice, Device, FileDevice, MemoryDevice  # noqa: E402
from csnapd.store.store import Store  # noqa: E402

CS = 4096


class CountingDevice(Device):
    """A memory device that counts the bytes written to it."""

    def __init__(self, size: int) -> None:
        self.inner = MemoryDevice(size)
        self.path = "<counting>"
        self.written = 0

    @property
    def size(self) -> int:
        return self.inner.size

    def pread(self, offset: int, length: int) -> bytes:
        return self.inner.pread(offset, length)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)
        self.inner.pwrite(offset, data)

    def flush(self) -> None:
        """Memory is always durable."""


def bytes_per_copyout(ops: int, per_commit: int) -> dict[str, float]:
    """Store bytes written per 4 KiB copy-out, committing every ``per_commit`` operations."""
    dev = CountingDevice(256 << 20)
    origin = MemoryDevice(ops * CS + CS)
    create.create(dev.inner, origin.size, chunk_size=CS, block_size=CS)
    store = Store.open(dev, origin)
    store.create_snapshot("snap")
    store.commit()
    store._checkpoint()
    start, commits = dev.written, store.stats["commits"]
    for i in range(ops):
        store.origin_write([(i, 1)])
        store.grants.add_origin(1000 + i % 16, [(i, 1)])
        if (i + 1) % per_commit == 0:
            store.commit()
    store.commit()
    checkpoints = store.stats["checkpoints"]
    store._checkpoint()  # the home writes the run still owes
    total = dev.written - start
    return {"ops_per_commit": per_commit, "ops": ops,
            "kib_per_copyout": round(total / ops / 1024, 2),
            "data_kib": CS / 1024,
            "journal_kib_per_op": round(store.stats.get("journal_bytes", 0) / ops / 1024, 2),
            "commits": store.stats["commits"] - commits, "checkpoints": checkpoints}


def lookup_costs(n: int = 65536) -> dict[str, float]:
    """Microseconds per chunk of the lookup paths over a tree of ``n`` exceptions."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        with open(path, "wb") as fh:
            fh.truncate(n * CS * 2)
        return _lookup_costs(FileDevice(str(path)), n)


def _lookup_costs(dev: FileDevice, n: int) -> dict[str, float]:
    origin = AbsentDevice(n * CS)
    create.create(dev, origin.size, chunk_size=CS, block_size=CS)
    store = Store.open(dev, origin, cache_size=256 << 20)
    store.copier.queue = lambda source, from_store, dest: None  # no data copies
    slot = store.create_snapshot("snap").slot
    for start in range(0, n, 1024):
        store.origin_write([(start, 1024)])
        store.commit()
    rng = random.Random(1)
    starts = [rng.randrange(0, n - 64) for _ in range(2000)]
    singles = [rng.randrange(n) for _ in range(20000)]

    def best(fn, chunks: int) -> float:  # noqa: ANN001
        times = []  # CPU time of this process: less disturbed by a busy machine
        for _ in range(7):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return round(min(times) / chunks * 1e6, 3)

    return {
        "snapshot_map_us_per_chunk": best(
            lambda: [store.snapshot_map(slot, [(s, 64)]) for s in starts], 64 * len(starts)),
        "snapshot_lookup_us": best(
            lambda: [store.snapshot_lookup(slot, c) for c in singles], len(singles)),
        "origin_write_check_us_per_chunk": best(
            lambda: [store.origin_write([(s, 64)]) for s in starts], 64 * len(starts)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=4096, help="first-touch writes per point")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--only", choices=("bytes", "lookups"), help="just one of the two")
    args = p.parse_args(argv)
    out = {"bytes": [bytes_per_copyout(args.ops, k) for k in (1, 16, 32)]
           if args.only != "lookups" else [],
           "lookups": lookup_costs() if args.only != "bytes" else {}}
    for row in out["bytes"]:
        print(f"{row['ops_per_commit']:>2} ops/commit: {row['kib_per_copyout']:6.2f} KiB written "
              f"per 4 KiB copy-out (journal {row['journal_kib_per_op']} KiB/op, "
              f"{row['commits']} commits, {row['checkpoints']} checkpoints)")
    for key, value in out["lookups"].items():
        print(f"{key}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
