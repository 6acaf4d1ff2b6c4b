"""csnap-diff: what changed between two snapshots, as an rbd diff v1 stream.

Examples::

    csnap-diff --from monday --to tuesday --output mon-tue.diff
    csnap-diff --to tuesday > tuesday-full.diff          # everything in tuesday
    rbd merge-diff mon-tue.diff tue-wed.diff mon-wed.diff   # Ceph reads what csnap writes

The changed chunks come from csnapd (QUERY_CHANGES, metadata only); the data is read from
the store and origin devices like every client (read locks where ``--to`` shares chunks
with the origin). Chunks that read as zeros become 'z' records. Connection options and
environment as csnap-io. Exit codes: see csnap_diff/cli.py (0 ok, 2 usage, 5 refused).
"""

from __future__ import annotations

import argparse
import sys

from csnap_client.version import add_version_option
from csnap_diff import cli
from csnap_diff.export import export_diff
from csnap_diff.remote import add_connection_options, open_volume, volume_ref


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="csnap-diff", epilog=cli.EPILOG, description=(
        "Write the changes from snapshot --from to snapshot --to (without --from: all of "
        "--to) as an rbd diff v1 stream (Ceph's export-diff format)."))
    add_version_option(p)
    p.add_argument("--to", required=True, metavar="SNAPSHOT", help="the newer snapshot")
    p.add_argument("--from", dest="from_snap", metavar="SNAPSHOT",
                   help="the older snapshot (omit for a full diff)")
    p.add_argument("--output", "-o", default="-", metavar="FILE",
                   help="where to write the diff (default -: stdout)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    add_connection_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csnap-diff`` console script."""
    args = build_parser().parse_args(argv)

    async def go() -> None:
        fd = cli.output_fd(args.output)
        async with await open_volume(args, volume_ref(args.to), read_only=True) as vol:
            stats = await export_diff(vol, None if args.from_snap is None
                                      else volume_ref(args.from_snap), fd,
                                      progress=args.progress)
        if args.progress:
            cli.say("csnap-diff", f"{stats.changed_chunks} changed chunks: "
                    f"{stats.data_bytes} data bytes, {stats.zero_bytes} zero bytes")
    return cli.run("csnap-diff", go, args.server)


if __name__ == "__main__":
    sys.exit(main())
