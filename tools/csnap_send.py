"""csnap-send: stream the changes between two snapshots for csnap-receive, verifiably.

Examples::

    csnap-send --from monday --to tuesday | ssh backup csnap-receive --volume origin
    csnap-send --resume "$(ssh backup csnap-receive --volume origin --token)" \\
        | ssh backup csnap-receive --volume origin

Each record carries a CRC32C and the stream a chained SHA-256 digest, with checkpoints
the receiver records (docs/replication.md). ``--resume TOKEN`` continues an interrupted
transfer from the receiver's last verified checkpoint. Connection options and
environment as csnap-io.
"""

from __future__ import annotations

import argparse
import sys

from csnap_client.units import parse_size
from csnap_client.version import add_version_option
from csnap_diff import cli
from csnap_diff.export import CHECKPOINT_BYTES, send
from csnap_diff.remote import add_connection_options, open_volume, volume_ref
from csnap_diff.state import parse_token


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="csnap-send", epilog=cli.EPILOG, description=(
        "Write a verified, resumable replication stream of the changes from --from to "
        "--to (without --from: all of --to)."))
    add_version_option(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--to", metavar="SNAPSHOT", help="the snapshot to send")
    what.add_argument("--resume", metavar="TOKEN",
                      help="continue the transfer a receiver's token names "
                           "(csnap-receive --token)")
    p.add_argument("--from", dest="from_snap", metavar="SNAPSHOT",
                   help="the snapshot the receiver already has (omit for a full stream)")
    p.add_argument("--output", "-o", default="-", metavar="FILE",
                   help="where to write the stream (default -: stdout)")
    p.add_argument("--rate-limit", metavar="RATE", default=None,
                   help="at most RATE bytes per second (K/M/G suffixes)")
    p.add_argument("--checkpoint", metavar="SIZE", default=str(CHECKPOINT_BYTES),
                   help="a checkpoint record every SIZE stream bytes (and every 5 s; "
                        "default %(default)s)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar with bytes and ETA on stderr (default: when stderr "
                        "is a terminal)")
    add_connection_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csnap-send`` console script."""
    args = build_parser().parse_args(argv)

    async def go() -> None:
        rate = parse_size(args.rate_limit) if args.rate_limit else None
        every = parse_size(args.checkpoint)
        token = parse_token(args.resume) if args.resume else None
        if token is not None and args.from_snap is not None:
            raise ValueError("--resume takes the snapshots from the token; drop --from")
        to = token.to_snap if token is not None else volume_ref(args.to)
        base = token.from_snap if token is not None else (
            None if args.from_snap is None else volume_ref(args.from_snap))
        fd = cli.output_fd(args.output)
        async with await open_volume(args, to, read_only=True) as vol:
            await send(vol, base, fd, resume=token, rate=rate, progress=args.progress,
                       checkpoint_bytes=max(1, every))
    return cli.run("csnap-send", go, args.server)


if __name__ == "__main__":
    sys.exit(main())
