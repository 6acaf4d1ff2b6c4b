"""``csnapctl grow``: its arguments, its call and its output (kept apart from csnapctl.py
so that file only wires it in).

The operator enlarges the store or origin device first (``truncate -s``, ``lvextend``),
then runs ``csnapctl grow --store`` / ``--origin``; csnapd reads the device's size now,
grows through the journal while clients keep working, and answers once it is durable.
"""

from __future__ import annotations

import argparse
from typing import Any

from csnap_client.control import ControlClient
from csnap_client.units import format_size, parse_size


def add_parser(sub: Any) -> None:  # noqa: ANN401 - argparse's private subparsers type
    """The ``grow`` subcommand."""
    g = sub.add_parser(
        "grow", help="take an enlarged store or origin device into use",
        description="Grow the store and/or the origin after their device or file was "
                    "enlarged, while clients keep working: csnapd uses the whole device "
                    "(or the size given), journaled like any change. Origin clients and "
                    "new csnap-nbd connections see the new origin size; snapshots taken "
                    "before keep their size. Shrinking is refused with the reason.")
    g.add_argument("--store", action="store_true", help="grow the store to its device's size")
    g.add_argument("--origin", action="store_true",
                   help="grow the origin to its device's size")
    g.add_argument("--store-size", type=parse_size, default=None, metavar="SIZE",
                   help="grow the store to SIZE bytes (64K, 10G...; at most the device)")
    g.add_argument("--origin-size", type=parse_size, default=None, metavar="SIZE",
                   help="grow the origin to SIZE bytes (at most the device)")
    g.add_argument("--json", action="store_true", help="print the result as JSON")


def check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse a ``grow`` that names nothing to grow (usage error, exit 2)."""
    if args.command == "grow" and not (args.store or args.origin or args.store_size
                                       or args.origin_size):
        parser.error("grow: say what to grow: --store and/or --origin (or a --*-size)")


async def run(ctl: ControlClient, args: argparse.Namespace) -> dict[str, Any]:
    return await ctl.grow(args.store, args.origin, args.store_size, args.origin_size)


def render(result: dict[str, Any]) -> str:
    """One line per growth asked for."""
    lines = []
    for g in result.get("grown", []):
        if g["what"] == "store":
            chunk = result["store_bytes"] // max(1, result["store_chunks"])
            old, new = g["old"] * chunk, g["new"] * chunk
        else:
            old, new = g["old"], g["new"]
        if g["how"] == "unchanged":
            lines.append(f"{g['what']}: unchanged at {format_size(new)} ({new} bytes): its "
                         "device is no larger")
            continue
        how = {"in place": "", "bitmaps moved": "; its bitmaps moved into the new space",
               "recorded": "; older snapshots keep their size",
               "no snapshots": ""}.get(g["how"], f" ({g['how']})")
        lines.append(f"{g['what']}: grew from {format_size(old)} to {format_size(new)} "
                     f"({new} bytes){how}")
    return "\n".join(lines)
