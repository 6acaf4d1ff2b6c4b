"""csnap-init: create a snapshot store on a file or block device.

Both devices must exist: csnap-init writes the store onto the store device and records
the origin's size.  For a try-out on files: ``truncate -s 1G origin.img; truncate -s 2G
store.img`` (sparse).  A store far smaller than its origin is created, with a warning:
see "Sizing the store" in docs/operations.md.

Exit status: 0 created (warnings, if any, on stderr), 1 refused or failed (the message
says why), 2 usage, 3 the store is in use (a running csnapd, or another csnap tool,
holds its lock): stop it first.
"""

from __future__ import annotations

import argparse
import os
import sys

from csnap_client.units import format_size, parse_size
from csnap_client.version import add_version_option
from csnapd.explain import (
    create_file_hint,
    device_problem,
    store_size_warning,
    suggested_store_size,
)
from csnapd.store import create
from csnapd.store.device import FileDevice
from csnapd.store.errors import StoreBusyError, StoreError
from csnapd.store.superblock import read_slots
from tools.progress import Progress

EXIT_IN_USE = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csnap-init", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(p)
    p.add_argument("--store", required=True, metavar="PATH",
                   help="snapshot store: an existing file or block device, overwritten")
    p.add_argument("--origin", required=True, metavar="PATH",
                   help="origin file or block device (only its size is read)")
    p.add_argument("--chunk-size", default="64K", metavar="SIZE",
                   help="copy-out unit, a power of two from 4K to 1M (default 64K)")
    p.add_argument("--block-size", default=None, metavar="SIZE",
                   help="metadata block size (default 4K, raised for large --max-snapshots)")
    p.add_argument("--journal-size", default=None, metavar="SIZE",
                   help="journal size (default 8M, at most 1/8 of the store)")
    p.add_argument("--max-snapshots", type=int, default=create.DEFAULT_MAX_SNAPSHOTS,
                   metavar="N", help="snapshots the store can hold at once (default 64)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing store (every snapshot on it is lost)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress and no summary (warnings and errors still go to stderr)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _device_problem(args)
    if problem:
        print(f"csnap-init: {problem}", file=sys.stderr)
        return 1
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
    warning = store_size_warning(f.free_chunks * f.chunk_size, f.origin_bytes)
    if warning:
        print(f"csnap-init: warning: {warning}", file=sys.stderr)
    if not args.quiet:
        print(f"created store {args.store}: {f.store_chunks} chunks of {format_size(f.chunk_size)}"
              f" ({f.free_chunks} free), metadata blocks {format_size(f.block_size)}, journal "
              f"{format_size(f.journal_blocks * f.block_size)}, up to {f.max_snapshots} snapshots,"
              f" origin {format_size(f.origin_bytes)} ({f.origin_chunks} chunks)")
    return 0


def _device_problem(args: argparse.Namespace) -> str | None:
    """Why the devices named cannot be used, with how to make a missing one; or None."""
    problem = device_problem("origin", args.origin, writable=False)
    if problem and not os.path.lexists(args.origin):
        return (f"{problem}: csnap-init records the origin's size, so the origin must exist: "
                f"{create_file_hint(args.origin, '1G')}")
    if problem:
        return problem
    problem = device_problem("store", args.store, writable=True)
    if problem and not os.path.lexists(args.store):
        return (f"{problem}: csnap-init writes a store onto an existing file or block device; "
                f"{create_file_hint(args.store, suggested_store_size(args.origin))}; "
                "'Sizing the store' in docs/operations.md says how large")
    return problem


if __name__ == "__main__":
    sys.exit(main())
