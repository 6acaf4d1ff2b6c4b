"""The installed csnap version, and the ``--version`` option every command shares.

Every console script answers ``--version`` the same way, so an operator (or a bug
report) can tell which csnap and which wire protocol a host runs with one command.
The version comes from the installed distribution's metadata (pyproject.toml), so it
is never out of step with what pip installed.
"""

from __future__ import annotations

import argparse
from importlib import metadata

DISTRIBUTION = "csnap"


def version() -> str:
    """The installed csnap version, or ``"unknown"`` when csnap runs uninstalled."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def version_text(prog: str) -> str:
    """What ``PROG --version`` prints: the program, csnap's version, the protocol version."""
    from csnap_client.protocol.messages import PROTOCOL_VERSION

    return f"{prog} (csnap) {version()}, protocol version {PROTOCOL_VERSION}"


def add_version_option(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--version`` option that prints :func:`version_text` and exits 0."""
    parser.add_argument("--version", action="version", version=version_text(parser.prog),
                        help="print the csnap version and exit")
