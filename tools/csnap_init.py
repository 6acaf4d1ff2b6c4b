"""csnap-init: create a snapshot store on a file or block device.

Exit status: 0 created, 1 refused or failed (the message says why), 2 usage, 3 the store
is in use (a running csnapd, or another csnap tool, holds its lock): stop it first.
"""

from __future__ import annotations

import argparse
import os
import sys

from csnap_client.units import format_size, parse_size
from csnapd.store import create
from csnapd.store.device import FileDevice
from csnapd.store.errors import StoreBusyError, StoreError
from csnapd.store.superblock import read_slots
from tools.progress import Progress

EXIT_IN_USE = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csnap-init", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="snapshot store file or block device")
    p.add_argument("--origin", required=True, help="origin file or block device")
    p.add_argument("--chunk-size", default="64K", help="copy-out unit (4K..1M, default 64K)")
    p.add_argument("--block-size", default=None,
                   help="metadata block size (default 4K, raised for large --max-snapshots)")
    p.add_argument("--journal-size", default=None, help="journal size (default 8M, ≤ store/8)")
    p.add_argument("--max-snapshots", type=int, default=create.DEFAULT_MAX_SNAPSHOTS,
                   help="snapshots the store can hold at once (default 64)")
    p.add_argument("--force", action="store_true", help="overwrite an existing store")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = {
            "chunk_size": parse_size(args.chunk_size),
            "block_size": parse_size(args.block_size) if args.block_size else None,
            "journal_bytes": parse_size(args.journal_size) if args.journal_size else None,
            "max_snapshots": args.max_snapshots,
        }
        origin = FileDevice(args.origin, writable=False)
        origin_bytes = origin.size
        origin.close()
        if os.path.realpath(args.origin) == os.path.realpath(args.store):
            raise StoreError("the store and the origin must be different devices")
        dev = FileDevice(args.store, writable=True, lock=True)
    except StoreBusyError as exc:
        print(f"csnap-init: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    except (OSError, ValueError, StoreError) as exc:
        print(f"csnap-init: {exc}", file=sys.stderr)
        return 1
    try:
        if not args.force and any(f is not None for _, f, _ in read_slots(dev)):
            print(f"csnap-init: {args.store} already holds a csnap store; use --force to "
                  "overwrite it (every snapshot on it will be lost)", file=sys.stderr)
            return 1
        progress = Progress("initialising", quiet=args.quiet)
        f = create.create(dev, origin_bytes, progress=progress, **options)
        progress.finish()
    except (OSError, StoreError) as exc:
        print(f"csnap-init: {exc}", file=sys.stderr)
        return 1
    finally:
        dev.close()
    if not args.quiet:
        print(f"created store {args.store}: {f.store_chunks} chunks of {format_size(f.chunk_size)}"
              f" ({f.free_chunks} free), metadata blocks {format_size(f.block_size)}, journal "
              f"{format_size(f.journal_blocks * f.block_size)}, up to {f.max_snapshots} snapshots,"
              f" origin {format_size(f.origin_bytes)} ({f.origin_chunks} chunks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
