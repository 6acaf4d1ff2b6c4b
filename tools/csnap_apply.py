"""csnap-apply: apply an rbd diff (csnap-diff's, or Ceph's export-diff) to a csnap volume
or to a plain file or block device.

Examples::

    csnap-apply mon-tue.diff --volume origin --create-snapshot   # replica of tuesday
    csnap-apply mon-tue.diff --file backup.img                   # image of monday -> tuesday
    rbd export-diff pool/img@b --from-snap a - | csnap-apply - --file img.raw

A diff made from snapshot A is refused unless the target holds A's contents (``--force``
applies it anyway): a csnap volume must be unchanged since the target server's snapshot
A (the server compares the sharemaps); a file must carry A in its ``user.csnap.snapshot``
extended attribute, which csnap-apply and csnap-receive set after a complete apply.
Writes to the origin copy out what snapshots share, as for every client.
"""

from __future__ import annotations

import argparse
import sys

from csnap_client.version import add_version_option
from csnap_diff import cli
from csnap_diff.ingest import apply_rbd, read_rbd_header
from csnap_diff.remote import (
    FromStateError,
    add_connection_options,
    check_from_state,
    control_path,
    create_snapshot,
    open_volume,
    volume_ref,
)
from csnap_diff.targets import FileTarget, VolumeTarget


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="csnap-apply", epilog=cli.EPILOG, description=(
        "Apply an rbd diff v1/v2 to a csnap volume or to a file or block device."))
    add_version_option(p)
    p.add_argument("diff", metavar="DIFF", help="the diff file (- for stdin)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--volume", metavar="NAME", help='a csnap volume: "origin" or a snapshot')
    where.add_argument("--file", metavar="PATH", help="a plain file or block device")
    p.add_argument("--force", action="store_true",
                   help="apply even if the target is not known to hold the diff's from state")
    p.add_argument("--create-snapshot", action="store_true",
                   help="afterwards create the diff's to snapshot on the target server "
                        "(origin only; needs --control)")
    add_connection_options(p, control=True)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csnap-apply`` console script."""
    args = build_parser().parse_args(argv)

    async def go() -> None:
        if args.create_snapshot and args.volume != "origin":
            raise ValueError("--create-snapshot needs --volume origin")
        ctl = control_path(args) if args.create_snapshot else None
        with cli.input_file(args.diff) as inp:
            reader = await read_rbd_header(inp)
            h = reader.header
            if args.file:
                target = FileTarget(args.file, h.size, create=h.from_snap is None)
                if h.from_snap is not None and not args.force \
                        and target.state() != h.from_snap:
                    await target.close()
                    raise FromStateError(
                        f"{args.file} is not known to hold snapshot {h.from_snap!r} (it "
                        f"records {target.state()!r}); --force applies anyway")
                target.record_state(None)
            else:
                vol = await open_volume(args, volume_ref(args.volume))
                target = VolumeTarget(vol)
                try:
                    if not args.force:
                        await check_from_state(vol, h.from_snap)
                except BaseException:
                    await target.close()
                    raise
            try:
                await apply_rbd(reader, target)
                if isinstance(target, FileTarget) and h.to_snap is not None:
                    target.record_state(h.to_snap)
            finally:
                await target.close()
        if ctl is not None:
            if h.to_snap is None:
                raise ValueError("the diff names no to snapshot to create")
            await create_snapshot(ctl, h.to_snap)
    return cli.run("csnap-apply", go, args.server)


if __name__ == "__main__":
    sys.exit(main())
