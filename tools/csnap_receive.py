"""csnap-receive: apply a csnap-send stream to a csnap volume or a file, verified and
resumable.

Examples::

    ssh source csnap-send --from monday --to tuesday | csnap-receive --volume origin
    csnap-receive --volume origin --token        # the resume token after an interruption
    csnap-receive --file /backup/vm.img < tuesday.stream

Into ``--volume origin`` it ends by creating the stream's to snapshot on this side (via
``--control``), so the replica keeps the same snapshot history. A fresh stream from
snapshot A is refused unless the target holds A (as csnap-apply; ``--force`` skips it).
Records are applied only after their checksum matched; the state file records each
verified checkpoint (``--state``, default in $CSNAP_STATE_DIR or ~/.local/state/csnap).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from csnap_client.version import add_version_option
from csnap_diff import cli
from csnap_diff.ingest import receive
from csnap_diff.remote import (
    FromStateError,
    add_connection_options,
    check_from_state,
    control_path,
    create_snapshot,
    find_snapshot,
    open_volume,
    volume_ref,
)
from csnap_diff.state import StateFile, state_path
from csnap_diff.stream import StreamHeader
from csnap_diff.targets import FileTarget, VolumeTarget


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(prog="csnap-receive", epilog=cli.EPILOG, description=(
        "Receive a csnap-send stream into a csnap volume or a file or block device."))
    add_version_option(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--volume", metavar="NAME", help='a csnap volume: "origin" or a snapshot')
    where.add_argument("--file", metavar="PATH", help="a plain file or block device")
    p.add_argument("--input", "-i", default="-", metavar="FILE",
                   help="the stream (default -: stdin)")
    p.add_argument("--state", metavar="FILE", default=None,
                   help="progress file of this target (default: one per target in "
                        "$CSNAP_STATE_DIR, else $XDG_STATE_HOME/csnap or ~/.local/state/csnap)")
    p.add_argument("--token", action="store_true",
                   help="print the resume token of an unfinished receive and exit")
    p.add_argument("--abort", action="store_true",
                   help="forget an unfinished receive (the target keeps what it got)")
    p.add_argument("--force", action="store_true",
                   help="skip the from-state check, and replace an unfinished receive")
    p.add_argument("--no-snapshot", action="store_true",
                   help="do not create the to snapshot at the end (origin targets)")
    add_connection_options(p, control=True)
    return p


def _state(args: argparse.Namespace) -> StateFile:
    if args.state:
        return StateFile(Path(args.state))
    key = (f"file:{os.path.realpath(args.file)}" if args.file
           else f"volume:{args.server}/{args.volume}")
    return StateFile(state_path(key))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csnap-receive`` console script."""
    args = build_parser().parse_args(argv)
    state = _state(args)
    if args.token or args.abort:
        try:
            saved = state.load()
        except ValueError as exc:
            cli.say("csnap-receive", str(exc))
            return cli.EXIT_SERVER
        if saved is None:
            cli.say("csnap-receive", "no unfinished receive for this target")
            return cli.EXIT_SERVER
        if args.abort:
            state.clear()
            cli.say("csnap-receive", f"forgot the receive of {saved.to_snap} at byte "
                    f"{saved.position}")
        else:
            print(saved.token())
        return cli.EXIT_OK
    snapshot_at_end = args.volume == "origin" and not args.no_snapshot
    holder: dict[str, VolumeTarget | FileTarget] = {}

    async def open_target(h: StreamHeader) -> VolumeTarget | FileTarget:
        if args.file:
            holder["t"] = FileTarget(args.file, h.size, create=h.start == 0
                                     and h.from_snap is None)
        else:
            holder["t"] = target = VolumeTarget(await open_volume(args, volume_ref(args.volume)))
            if snapshot_at_end and h.start == 0 and not args.force \
                    and await find_snapshot(target.volume, h.to_snap) is not None:
                raise FromStateError(f"this side already has a snapshot {h.to_snap!r}")
        return holder["t"]

    async def check_from(from_snap: str | None) -> None:
        target = holder["t"]
        if isinstance(target, FileTarget):
            if from_snap is not None and target.state() != from_snap:
                raise FromStateError(f"{args.file} is not known to hold snapshot {from_snap!r} "
                                     f"(it records {target.state()!r}); --force receives "
                                     "anyway")
            return
        await check_from_state(target.volume, from_snap)

    async def finish(to_snap: str | None) -> None:
        target = holder["t"]
        if isinstance(target, FileTarget):
            target.record_state(to_snap)
        elif snapshot_at_end and to_snap is not None:
            await create_snapshot(ctl, to_snap)

    async def go() -> None:
        with cli.input_file(args.input) as inp:
            await receive(inp, open_target, state, check_from=check_from, finish=finish,
                          force=args.force, target_name=args.file or args.volume)

    ctl = ""
    if snapshot_at_end:
        try:
            ctl = control_path(args)
        except ValueError as exc:
            cli.say("csnap-receive", f"{exc} (or --no-snapshot)")
            return cli.EXIT_USAGE
    return cli.run("csnap-receive", go, args.server)


if __name__ == "__main__":
    sys.exit(main())
