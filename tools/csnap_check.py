"""csnap-check: verify a snapshot store; with --repair, fix leaks and counts.

Exit status: 0 clean, 1 inconsistencies found (each listed), 2 the store
cannot be read at all (not a store, damaged superblock or journal, I/O error),
3 --repair on a store in use (a running csnapd or another csnap tool holds its
lock): stop it first.

What journal recovery mended (a damaged journal block rebuilt from parity or
the other commit record copy) or dropped (a torn transaction at the end of the
journal, never acknowledged) is listed as "journal: ..." and summed up on the
verdict line; it does not make the store unclean.  Without --repair the store
is opened read-only, so this is done in memory only; the next read-write open
(csnapd, or --repair) does it for good.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys

from csnapd.store.check import check_store, repair
from csnapd.store.errors import StoreBusyError, StoreError
from csnapd.store.paths import open_store
from tools.progress import Progress

EXIT_IN_USE = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csnap-check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True)
    p.add_argument("--origin", help="origin device; when given, its size is verified too")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--repair", action="store_true",
                   help="fix leaked chunks/blocks and wrong counts (never touches mappings)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = open_store(args.store, args.origin, readonly=not args.repair)
    except StoreBusyError as exc:
        if args.json:
            print(json.dumps({"status": "in_use", "error": str(exc)}))
        else:
            print(f"csnap-check: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    except (OSError, StoreError) as exc:
        return _fail(args, str(exc))
    try:
        if not args.repair:
            _try_shared_lock(store)
        progress = Progress("checking", quiet=args.quiet or args.json)
        report = check_store(store, progress)
        progress.finish()
        actions: list[str] = []
        if args.repair and not report.clean:
            if not report.repairable:
                actions.append("not repaired: the store has errors that could mean wrong data")
            else:
                actions = repair(store, report)
                report = check_store(store)
    except (OSError, StoreError) as exc:
        return _fail(args, str(exc))
    finally:
        store.close()
    _print(args, report, actions)
    return 0 if report.clean else 1


def _try_shared_lock(store) -> None:  # noqa: ANN001
    try:
        fcntl.flock(store.dev.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        print("csnap-check: warning: the store is open in another process; results may be "
              "stale", file=sys.stderr)


def _fail(args: argparse.Namespace, message: str) -> int:
    if args.json:
        print(json.dumps({"status": "unreadable", "error": message}))
    else:
        print(f"csnap-check: cannot read store: {message}", file=sys.stderr)
    return 2


def _print(args: argparse.Namespace, report, actions: list[str]) -> None:  # noqa: ANN001
    if args.json:
        print(json.dumps({"status": "clean" if report.clean else "inconsistent",
                          "problems": [p.as_dict() for p in report.problems],
                          "notes": report.notes, "journal": report.journal,
                          "repairs": actions, "stats": report.stats}, indent=1))
        return
    for action in actions:
        print(f"repair: {action}")
    for note in report.journal:
        print(f"journal: {note}")
    for note in report.notes:
        print(f"note: {note}")
    for p in report.problems:
        where = f" [block {p.block}{' ' + p.path if p.path else ''}]" if p.block is not None else ""
        print(f"{p.severity}: {p.message}{where}")
    s = report.stats
    verdict = "clean" if report.clean else f"{len(report.problems)} problem(s)"
    if report.journal:
        verdict += (f" (journal recovery: {s.get('journal_corrected', 0)} damaged block(s) "
                    f"mended, {s.get('journal_dropped', 0)} torn transaction(s) dropped"
                    + (")" if args.repair else ", in memory only until a read-write open)"))
    print(f"{verdict}: {s.get('exceptions', 0)} exceptions in {s.get('leaves', 0)} leaves and "
          f"{s.get('nodes', 0)} index nodes, depth {s.get('depth', 0)}, "
          f"{s.get('free_chunks', 0)}/{s.get('store_chunks', 0)} chunks free")


if __name__ == "__main__":
    sys.exit(main())
