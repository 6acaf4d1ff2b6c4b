"""csnap-bench: measure csnapd against an ideal server, raw I/O and qemu, in one run.

Starts its own csnapd processes (and the ideal server, qemu-nbd, csnap-nbd) on sparse files
in a temporary directory, runs the workloads of docs/performance.md, prints the tables and
the targets, and writes the report as JSON. The benchmark itself is the csnap_bench package;
this is its command line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from csnap_bench import config, report, runner
from csnap_client.units import parse_size
from csnap_client.version import add_version_option

EXIT_OK, EXIT_MISSED, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="csnap-bench", description=__doc__.split("\n\n")[0])
    add_version_option(p)
    p.add_argument("--quick", action="store_true", help="smoke run, well under a minute")
    p.add_argument("--json", default="bench-results.json", metavar="FILE",
                   help="write the report here as JSON (default bench-results.json)")
    p.add_argument("--compare", metavar="FILE", default=None,
                   help="an earlier --json report: print its headline figures beside this "
                        "run's")
    p.add_argument("--show", metavar="FILE", default=None,
                   help="print an earlier --json report (and --compare) without running")
    p.add_argument("--scale-exceptions", type=int, default=0, metavar="N",
                   help="exceptions in the large store (default 600000; 20000 with --quick); "
                        "10000000 for the full-size run (several minutes to build)")
    p.add_argument("--delete-exceptions", type=int, default=0, metavar="N",
                   help="exceptions owned by the snapshot deleted under load (default "
                        "min(1000000, scale/2))")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="seconds per measured point (all stages)")
    p.add_argument("--reps", type=int, default=0, metavar="N",
                   help="csnapd / ideal server pairs per cost point (default 3, 1 with "
                        "--quick)")
    p.add_argument("--nbd-size", default=None, metavar="SIZE",
                   help="volume size of the NBD comparison (default 128M, 16M with --quick)")
    p.add_argument("--cache-size", default=None, help="csnapd --cache-size for the scale "
                   "part (default 64M)")
    p.add_argument("--dir", default=None, help="directory for the temporary files (default: "
                   "a new directory under $TMPDIR)")
    p.add_argument("--only", action="append", choices=config.STAGES,
                   help="run only these stages (repeatable)")
    p.add_argument("--skip", action="append", choices=["library"], help="skip a part")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a measured target is missed")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``csnap-bench``: 0 done, 1 a target missed (--strict), 2 usage,
    3 the benchmark failed."""
    args = build_parser().parse_args(argv)
    try:
        nbd_bytes = parse_size(args.nbd_size) if args.nbd_size else 0
    except ValueError as exc:
        print(f"csnap-bench: --nbd-size: {exc}", file=sys.stderr)
        return EXIT_USAGE
    before = None
    if args.compare:
        try:
            before = json.loads(Path(args.compare).read_text())
        except (OSError, ValueError) as exc:
            print(f"csnap-bench: --compare: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.show:
        try:
            out = json.loads(Path(args.show).read_text())
        except (OSError, ValueError) as exc:
            print(f"csnap-bench: --show: {exc}", file=sys.stderr)
            return EXIT_USAGE
        report.print_report(out)
        if before is not None:
            report.print_comparison(before, out)
        return EXIT_OK
    cfg = config.make(args.quick, seconds=args.seconds, scale_exceptions=args.scale_exceptions,
                      delete_exceptions=args.delete_exceptions, cache_size=args.cache_size,
                      reps=args.reps, nbd_bytes=nbd_bytes, skip=args.skip)
    base = Path(args.dir) if args.dir else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="csnap-bench-", dir=base))
    try:
        out = runner.run_blocking(cfg, tmp, set(args.only or []))
    except (RuntimeError, OSError) as exc:
        print(f"csnap-bench: the benchmark failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.print_report(out)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nresults written to {args.json} ({out['elapsed_s']} s)")
    if before is not None:
        report.print_comparison(before, out)
    if args.strict and any(t["met"] is False for t in out["targets"]):
        return EXIT_MISSED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
