"""csnap-check: verify a snapshot store; with --repair, fix leaks and counts.

Exit status: 0 clean, 1 inconsistencies found (each listed), 2 the store
cannot be read at all (not a store, damaged superblock or journal, I/O error),
3 --repair on a store in use (a running csnapd or another csnap tool holds its
lock): stop it first.

A store that was not shut down cleanly (csnapd killed, a crash) is checked as csnapd
will find it: its journal is replayed in memory first, and the verdict says so.

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

from csnap_client.version import add_version_option
from csnapd.explain import device_problem, format_problem, not_a_store
from csnapd.store.check import check_store, repair
from csnapd.store.errors import FormatError, StoreBusyError, StoreError
from csnapd.store.paths import open_store
from tools.cli import run_main
from tools.progress import Progress

EXIT_IN_USE = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csnap-check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(p)
    p.add_argument("--store", required=True, metavar="PATH",
                   help="the snapshot store file or block device to check")
    p.add_argument("--origin", metavar="PATH",
                   help="origin device; when given, its size is verified too")
    p.add_argument("--json", action="store_true",
                   help="machine-readable report on stdout (no progress)")
    p.add_argument("--repair", action="store_true",
                   help="fix leaked chunks/blocks and wrong counts (never touches mappings); "
                        "needs the store not in use")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csnap-check`` console script."""
    return run_main(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    problem = device_problem("store", args.store, writable=args.repair)
    if not problem and args.origin:
        problem = device_problem("origin", args.origin, writable=False)
    if problem:
        return _fail(args, problem, prefix="")
    try:
        store = open_store(args.store, args.origin, readonly=not args.repair)
    except StoreBusyError as exc:
        if args.json:
            print(json.dumps({"status": "in_use", "error": str(exc)}))
        else:
            print(f"csnap-check: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    except FormatError as exc:
        blank = not_a_store(args.store, args.origin)
        return _fail(args, format_problem(args.store, args.origin, exc),
                     prefix="" if blank else "cannot read store: ")
    except (OSError, StoreError) as exc:
        return _fail(args, str(exc))
    in_use = False
    try:
        if not args.repair:
            in_use = _in_use_elsewhere(store)
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
        shutdown = _shutdown_state(store.recovery, in_use, args.repair)
    except (OSError, StoreError) as exc:
        return _fail(args, str(exc))
    finally:
        store.close()
    _print(args, report, actions, shutdown)
    return 0 if report.clean else 1


def _in_use_elsewhere(store) -> bool:  # noqa: ANN001
    """Warn, and return True, when another process (csnapd) holds the store's lock."""
    try:
        fcntl.flock(store.dev.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        print("csnap-check: warning: the store is open in another process (a running "
              "csnapd?); results may be stale", file=sys.stderr)
        return True
    return False


def _shutdown_state(recovery, in_use: bool, repaired: bool) -> dict[str, object]:  # noqa: ANN001
    """How the store was left: shut down cleanly, in use, or not shut down cleanly.

    A store left busy (csnapd killed, the host crashed) is consistent once its journal
    is replayed; this check replayed it in memory (or for good with --repair), and
    csnapd replays it at its next start.  Said on the verdict line, so a plain "clean"
    never hides that the journal still has to be replayed.
    """
    if not recovery.unclean:
        return {"state": "clean", "replayed_transactions": recovery.transactions, "text": ""}
    n = recovery.transactions
    if in_use:
        text = (f"in use by another process, whose journal ({n} transaction(s) since the "
                "last checkpoint) was replayed in memory for this check")
        return {"state": "in_use", "replayed_transactions": n, "text": text}
    if repaired:
        text = (f"not shut down cleanly, so {n} journal transaction(s) were replayed and "
                "checkpointed: the store is now marked clean")
    else:
        text = (f"not shut down cleanly, so {n} journal transaction(s) were replayed in "
                "memory only: csnapd or csnap-check --repair replays them for good when it "
                "opens the store")
    return {"state": "unclean", "replayed_transactions": n, "text": text}


def _fail(args: argparse.Namespace, message: str, prefix: str = "cannot read store: ") -> int:
    if args.json:
        print(json.dumps({"status": "unreadable", "error": message}))
    else:
        print(f"csnap-check: {prefix}{message}", file=sys.stderr)
    return 2


def _print(args: argparse.Namespace, report, actions: list[str],  # noqa: ANN001
           shutdown: dict[str, object]) -> None:
    if args.json:
        print(json.dumps({"status": "clean" if report.clean else "inconsistent",
                          "shutdown": shutdown["state"],
                          "replayed_transactions": shutdown["replayed_transactions"],
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
    said = [str(shutdown["text"])] if shutdown["text"] else []
    if report.journal:
        said.append(f"journal recovery: {s.get('journal_corrected', 0)} damaged block(s) "
                    f"mended, {s.get('journal_dropped', 0)} torn transaction(s) dropped"
                    + ("" if args.repair else ", in memory only until a read-write open"))
    if said:
        verdict += f" ({'; '.join(said)})"
    print(f"{verdict}: {s.get('exceptions', 0)} exceptions in {s.get('leaves', 0)} leaves and "
          f"{s.get('nodes', 0)} index nodes, depth {s.get('depth', 0)}, "
          f"{s.get('free_chunks', 0)}/{s.get('store_chunks', 0)} chunks free")


if __name__ == "__main__":
    sys.exit(main())
