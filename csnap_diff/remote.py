"""Connecting the diff tools to csnapd, and the checks they ask the server to make.

The connection options are csnap-io's (``--server``/``CSNAP_SERVER``, ``--origin``/
``CSNAP_ORIGIN``, ``--store``/``CSNAP_STORE``, ``--secret-file``/``CSNAP_SECRET_FILE``,
``--tls-ca``/``CSNAP_TLS_CA``, ``--timeout``), plus ``--control``/``CSNAP_CONTROL`` where a
tool creates a snapshot.
"""

from __future__ import annotations

import argparse
import os
import ssl
from typing import Any

import csnap_client
from csnap_client.addresses import Address, parse_address_list
from csnap_client.control import ControlClient
from csnap_client.protocol import messages as m
from csnap_client.protocol.auth import read_secret

from .source import list_changes

DEFAULT_SERVER = "127.0.0.1:4270"
SYSTEM_CONTROL = "/run/csnapd/control.sock"


class FromStateError(Exception):
    """The target does not hold the diff's ``from`` state (or its ``to`` already exists)."""


def add_connection_options(p: argparse.ArgumentParser, control: bool = False) -> None:
    """Add the csnap-io connection options (and ``--control`` when ``control``)."""
    g = p.add_argument_group("csnapd connection (as csnap-io)")
    g.add_argument("--server", default=os.environ.get("CSNAP_SERVER", DEFAULT_SERVER),
                   metavar="HOST:PORT[,HOST:PORT...]",
                   help="csnapd data address, or a comma list of the nodes of a "
                        "high-availability set (env CSNAP_SERVER, default %(default)s)")
    g.add_argument("--origin", default=os.environ.get("CSNAP_ORIGIN"),
                   help="origin device or file (env CSNAP_ORIGIN)")
    g.add_argument("--store", default=os.environ.get("CSNAP_STORE"),
                   help="snapshot store device or file (env CSNAP_STORE)")
    g.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds")
    g.add_argument("--secret-file", default=os.environ.get("CSNAP_SECRET_FILE"),
                   help="shared secret of a server started with --secret-file "
                        "(env CSNAP_SECRET_FILE)")
    g.add_argument("--tls-ca", default=os.environ.get("CSNAP_TLS_CA"),
                   help="connect over TLS, trusting this CA file (env CSNAP_TLS_CA)")
    if control:
        g.add_argument("--control", metavar="PATH", default=None,
                       help="csnapd control socket, to create the snapshot at the end (env "
                            f"CSNAP_CONTROL, else {SYSTEM_CONTROL} if it exists)")


def parse_server(text: str) -> tuple[str, int]:
    """``host:port`` (the first of a comma list) -> (host, port); ValueError if malformed."""
    return parse_servers(text)[0]


def parse_servers(text: str) -> list[Address]:
    """``--server``: one ``host:port`` or a comma list of them; ValueError if malformed."""
    return parse_address_list(text, "--server")


def volume_ref(text: str) -> str | int:
    """A string of digits is a snapshot tag; anything else a name (or "origin")."""
    return int(text) if text.isdigit() else text


def control_path(args: argparse.Namespace) -> str:
    """The control socket: --control, $CSNAP_CONTROL, the system socket, else an error."""
    path = getattr(args, "control", None) or os.environ.get("CSNAP_CONTROL")
    if path:
        return path
    if os.path.exists(SYSTEM_CONTROL):
        return SYSTEM_CONTROL
    raise ValueError("--control (or $CSNAP_CONTROL) is needed to create the snapshot")


async def open_volume(args: argparse.Namespace, volume: str | int, read_only: bool = False
                      ) -> Any:
    """Connect and open ``volume`` with the devices and credentials of ``args``."""
    if not args.origin:
        raise ValueError("--origin (or $CSNAP_ORIGIN) is required")
    if volume != m.ORIGIN and not args.store:
        raise ValueError("--store (or $CSNAP_STORE) is required for a snapshot")
    (host, port), *others = parse_servers(args.server)
    secret = read_secret(args.secret_file) if args.secret_file else None
    tls = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
    return await csnap_client.connect(host, port, volume=volume, origin=args.origin,
                                      store=args.store, servers=others, timeout=args.timeout,
                                      reconnect_timeout=60.0, secret=secret, ssl=tls,
                                      read_only=read_only)


async def snapshots(volume: Any) -> list[dict[str, Any]]:
    """The server's live snapshots ({name, tag, created, squashed}), oldest first."""
    reply = await volume.client.request(m.list_volumes, resend=True)  # read-only
    return [s for s in reply["snapshots"] if not s.get("squashed")]


async def find_snapshot(volume: Any, ref: str | int) -> dict[str, Any] | None:
    """The snapshot named (or tagged) ``ref``, or None."""
    for s in await snapshots(volume):
        if s["name"] == ref or s["tag"] == ref:
            return s
    return None


async def check_from_state(volume: Any, from_snap: str | None) -> None:
    """Refuse unless ``volume`` holds snapshot ``from_snap``'s contents now: the server
    must know the snapshot and find no chunk whose copy differs (QUERY_CHANGES). A diff
    without ``from`` (a full one) fits any target."""
    if from_snap is None:
        return
    if await find_snapshot(volume, from_snap) is None:
        raise FromStateError(f"the target server has no snapshot {from_snap!r}, the diff's "
                             "from state")
    changed = await list_changes(volume, from_snap)
    if changed:
        chunks = sum(n for _, n in changed)
        raise FromStateError(f"{volume.name!r} differs from snapshot {from_snap!r} in "
                             f"{chunks} chunk(s) (first at chunk {changed[0][0]})")


async def create_snapshot(path: str, name: str) -> dict[str, Any]:
    """Create snapshot ``name`` through the control socket at ``path``."""
    async with ControlClient(path) as ctl:
        return await ctl.create(name)
