"""Online growth costs, in process, on sparse files: how long a store growth holds the
event loop (the in-memory part: new bitmaps built from the old ones) and how long its
commit takes on the worker (the new bitmaps written and flushed, then the switch).

    .venv/bin/python scripts/grow_costs.py                     # 256 GiB -> 1 TiB, 1 -> 4 TiB
    .venv/bin/python scripts/grow_costs.py --sizes 64G:80G --dir /var/tmp

The defaults of csnap-init (64 KiB chunks, 4 KiB blocks) on a sparse store file; the
files are removed afterwards.  The bitmaps are written for real (about 35 MiB per TiB),
so the commit time includes writing them to the page cache and one fdatasync.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from csnap_client.units import format_size, parse_size
from csnapd.store import create
from csnapd.store.device import FileDevice
from csnapd.store.store import Store


def measure(directory: str, old: int, new: int) -> dict[str, object]:
    """Grow a store made on ``old`` bytes to ``new`` bytes; the times, in seconds."""
    store, origin = os.path.join(directory, "grow-store.img"), os.path.join(
        directory, "grow-origin.img")
    try:
        for path, size in ((store, old), (origin, 64 << 30)):
            with open(path, "wb") as f:
                f.truncate(size)
        dev, org = FileDevice(store), FileDevice(origin)
        create.create(dev, org.size)
        s = Store.open(dev, org)
        with open(store, "r+b") as f:
            f.truncate(new)
        t0 = time.perf_counter()
        grown = s.grow_store()
        t1 = time.perf_counter()
        s.commit()
        t2 = time.perf_counter()
        s.close()
        return {"from": format_size(old), "to": format_size(new), "how": grown.how,
                "loop_s": round(t1 - t0, 3), "commit_s": round(t2 - t1, 3)}
    finally:
        for path in (store, origin):
            if os.path.exists(path):
                os.unlink(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="*", default=["256G:1T", "1T:4T"],
                   help="OLD:NEW store sizes to grow between")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the sparse files go")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()
    results = []
    for pair in args.sizes:
        old, new = (parse_size(x) for x in pair.split(":"))
        r = measure(args.dir, old, new)
        results.append(r)
        print(f"{r['from']} -> {r['to']} ({r['how']}): event loop {r['loop_s']} s, "
              f"commit {r['commit_s']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
