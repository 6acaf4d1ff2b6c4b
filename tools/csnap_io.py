"""csnap-io: read or write bytes of a csnap volume (the origin or a snapshot).

Examples::

    csnap-io --volume origin --origin o.img --store s.img write --offset 1M < data
    csnap-io --volume nightly --origin o.img --store s.img read --offset 0 --length 4K > out

Defaults from the environment: ``CSNAP_SERVER`` (host:port, else 127.0.0.1:4270),
``CSNAP_ORIGIN`` and ``CSNAP_STORE`` (device paths). Sizes accept K, M, G, T suffixes.
Exit codes: 0 ok, 1 server or I/O error, 2 usage, 3 cannot connect (the message says
which address was tried and, for this host, whether csnapd is running), 4 wrong device
(the origin or store given is not the server's; nothing was read or written).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import socket
import ssl
import sys

import csnap_client
from csnap_client.addresses import Address, parse_address_list
from csnap_client.client import NoLeaderError
from csnap_client.protocol import (
    ProtocolError,
    RemoteError,
    SnapshotDeletedError,
    SnapshotSquashedError,
    UnknownSnapshotError,
    WrongDeviceError,
)
from csnap_client.protocol.auth import read_secret
from csnap_client.units import parse_size
from csnap_client.version import add_version_option
from tools.cli import RunningServer, run_main, running_servers, servers_hint

DEFAULT_SERVER = "127.0.0.1:4270"
EXIT_SERVER, EXIT_USAGE, EXIT_CONNECT, EXIT_WRONG_DEVICE = 1, 2, 3, 4
BLOCK = 4 << 20  # bytes per read/write request issued by the tool


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="csnap-io", description="Read or write a csnap volume through csnapd.",
        epilog="Environment: CSNAP_SERVER (default 127.0.0.1:4270), CSNAP_ORIGIN, CSNAP_STORE "
               "give the defaults of --server, --origin, --store. Sizes take K/M/G/T "
               "suffixes. Exit codes: 0 ok, 1 server or I/O error, 2 usage, 3 cannot connect "
               "(the message says which address was tried and whether csnapd runs on this "
               "host), 4 wrong device (the origin or store is not the server's).")
    add_version_option(p)
    p.add_argument("--server", default=os.environ.get("CSNAP_SERVER", DEFAULT_SERVER),
                   metavar="HOST:PORT[,HOST:PORT...]",
                   help="csnapd data address, or a comma list of the nodes of a "
                        "high-availability set (the leader is found and followed); IPv6 "
                        "as [ADDR]:PORT (default %(default)s)")
    p.add_argument("--volume", required=True,
                   help='"origin", a snapshot name, or a snapshot tag (digits)')
    p.add_argument("--origin", default=os.environ.get("CSNAP_ORIGIN"), metavar="PATH",
                   help="origin device or file, the server's (default $CSNAP_ORIGIN)")
    p.add_argument("--store", default=os.environ.get("CSNAP_STORE"), metavar="PATH",
                   help="snapshot store device or file, needed for a snapshot (default "
                        "$CSNAP_STORE)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="connect timeout in seconds (default 10)")
    p.add_argument("--secret-file", default=os.environ.get("CSNAP_SECRET_FILE"),
                   metavar="PATH", help="shared secret for servers started with --secret-file "
                                        "(env CSNAP_SECRET_FILE)")
    p.add_argument("--tls-ca", default=os.environ.get("CSNAP_TLS_CA"), metavar="PATH",
                   help="connect over TLS, trusting this CA file (env CSNAP_TLS_CA)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("read", help="read LENGTH bytes from OFFSET to stdout",
                       description="Read LENGTH bytes of the volume from OFFSET and write them "
                                   "to stdout (on a terminal, a newline is added after data "
                                   "that does not end in one).")
    r.add_argument("--offset", default="0", metavar="SIZE",
                   help="byte offset, K/M/G suffixes (default 0)")
    r.add_argument("--length", required=True, metavar="SIZE",
                   help="bytes to read, K/M/G suffixes")
    w = sub.add_parser("write", help="write stdin to the volume at OFFSET",
                       description="Write everything read from stdin to the volume at OFFSET, "
                                   "then flush: when it exits 0 the data is durable.")
    w.add_argument("--offset", default="0", metavar="SIZE",
                   help="byte offset, K/M/G suffixes (default 0)")
    return p


def parse_server(text: str) -> tuple[str, int]:
    """``host:port`` (the first of a comma list) -> (host, port); ValueError if malformed."""
    return parse_servers(text)[0]


def parse_servers(text: str) -> list[Address]:
    """``--server``: one ``host:port`` or a comma list of them; ValueError if malformed."""
    return parse_address_list(text, "--server")


def volume_ref(text: str) -> str | int:
    """A string of digits is a snapshot tag; anything else a name (or "origin")."""
    return int(text) if text.isdigit() else text


class StdoutClosed(BrokenPipeError):
    """The reader of stdout went away (``| head``); the server connection is fine."""


class ConnectFailed(Exception):
    """The connection to csnapd could not be made; ``cause`` is the socket error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def run(args: argparse.Namespace, host: str, port: int,
              others: list[Address] | None = None) -> int:
    """Do the transfer; returns the number of bytes moved. ``others``: further csnapd
    nodes (high availability), tried when ``host:port`` does not lead."""
    offset = parse_size(args.offset)
    secret = read_secret(args.secret_file) if args.secret_file else None
    tls = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
    try:
        volume = await csnap_client.connect(host, port, volume=volume_ref(args.volume),
                                            origin=args.origin, store=args.store,
                                            servers=others, timeout=args.timeout,
                                            reconnect_timeout=30.0,
                                            secret=secret, ssl=tls)
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, OSError) and exc.filename:  # a device, not the network
            raise
        raise ConnectFailed(exc) from exc
    async with volume as vol:
        if args.command == "read":
            length = parse_size(args.length)
            out = sys.stdout.buffer
            done, last = 0, b""
            try:
                while done < length:
                    n = min(BLOCK, length - done)
                    data = await vol.read(offset + done, n)
                    out.write(data)
                    done += n
                    last = data[-1:] or last
                if last not in (b"", b"\n") and sys.stdout.isatty():
                    out.write(b"\n")  # keep the shell prompt off the data's last line
                out.flush()
            except BrokenPipeError:
                raise StdoutClosed from None  # not the server's connection: see run_main
            return done
        done = 0
        stdin = sys.stdin.buffer
        read = stdin.read
        if sys.stdin.isatty():
            print("csnap-io: writing what you type; end with Ctrl-D (or pipe the data in)",
                  file=sys.stderr)
            read = stdin.read1  # a terminal's Ctrl-D ends one read, not the stream
        while block := read(BLOCK):
            await vol.write(offset + done, block)
            done += len(block)
        await vol.flush()
        return done


def is_local(host: str) -> bool:
    """True if ``host`` names this machine (loopback, or one of its own names)."""
    if host in ("localhost", socket.gethostname(), "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def connect_problem(server: str, host: str, exc: BaseException,
                    servers: list[RunningServer] | None = None) -> str:
    """Why csnapd at ``server`` cannot be reached, and (for this host) whether it runs.

    ``servers`` are the csnapd processes visible here (looked up when None and the
    address is local), so the message can name the address csnapd really listens on.
    """
    if isinstance(exc, NoLeaderError):  # several addresses: what each one did
        return (f"cannot connect to csnapd at {server}: {exc} (is a csnapd node of that "
                "list running and elected leader?)")
    if isinstance(exc, socket.gaierror):
        return (f"cannot connect to csnapd at {server}: cannot resolve host {host!r} "
                f"({exc.strerror or exc}); give its address with --server or CSNAP_SERVER")
    if isinstance(exc, TimeoutError):
        why = ("no answer within the connect timeout (host down or unreachable, or a "
               "firewall drops the connection; --timeout waits longer)")
    elif isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        why = "connection refused (nothing listens on that address)"
    elif isinstance(exc, OSError) and exc.strerror:
        why = exc.strerror
    else:
        why = str(exc) or type(exc).__name__
    text = f"cannot connect to csnapd at {server}: {why}"
    if not is_local(host):
        return (f"{text}; is csnapd running on {host}, listening on that address (its "
                "--listen; the default 127.0.0.1 takes local clients only)?")
    if servers is None:
        servers = running_servers()
    hint = servers_hint(servers)
    addresses = [s.listen for s in servers if s.listen]
    if len(addresses) == 1:
        hint += f"; give its address with --server {addresses[0]} (or set CSNAP_SERVER)"
    return f"{text}; {hint}"


def device_problem(args: argparse.Namespace) -> str | None:
    """Why --origin or --store cannot be opened here, naming which one; or None."""
    wanted = [("origin", args.origin)]
    if args.volume != "origin":
        wanted.append(("store", args.store))
    for role, path in wanted:
        if not os.path.exists(path):
            return (f"{role} {path} does not exist (give the server's {role} device with "
                    f"--{role} or CSNAP_{role.upper()}: the same device csnapd serves)")
        if os.path.isdir(path):
            return f"{role} {path} is a directory; give a file or a block device"
        # the library opens the volume's own device read-write, even to read it
        write = role == "store" or args.volume == "origin"
        if not os.access(path, os.R_OK | (os.W_OK if write else 0)):
            return (f"{role} {path}: permission denied (this user may not "
                    f"{'read and write' if write else 'read'} it)")
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csnap-io`` console script."""
    return run_main(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        (host, port), *others = parse_servers(args.server)
        if not args.origin:
            raise ValueError("--origin (or $CSNAP_ORIGIN) is required: the origin device "
                             "csnapd serves")
        if not args.store and args.volume != "origin":
            raise ValueError("--store (or $CSNAP_STORE) is required for a snapshot")
        parse_size(args.offset)
        if args.command == "read":
            parse_size(args.length)
    except ValueError as exc:
        print(f"csnap-io: {exc}", file=sys.stderr)
        return EXIT_USAGE
    problem = device_problem(args)
    if problem:
        print(f"csnap-io: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(run(args, host, port, others))
    except StdoutClosed:
        raise  # run_main ends quietly: the reader has seen enough
    except ValueError as exc:  # range outside the volume
        print(f"csnap-io: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WrongDeviceError as exc:
        print(f"csnap-io: {exc.message}", file=sys.stderr)
        return EXIT_WRONG_DEVICE
    except (UnknownSnapshotError, SnapshotDeletedError, SnapshotSquashedError) as exc:
        print(f"csnap-io: server error: {exc}; 'csnapctl list' shows the snapshots",
              file=sys.stderr)
        return EXIT_SERVER
    except (RemoteError, ProtocolError) as exc:
        print(f"csnap-io: server error: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except ConnectFailed as exc:
        print(f"csnap-io: {connect_problem(args.server, host, exc.cause)}", file=sys.stderr)
        return EXIT_CONNECT
    except ConnectionError as exc:
        print(f"csnap-io: connection to csnapd at {args.server} failed: {exc}",
              file=sys.stderr)
        return EXIT_CONNECT
    except OSError as exc:
        print(f"csnap-io: I/O error: {exc}", file=sys.stderr)
        return EXIT_SERVER
    return 0


if __name__ == "__main__":
    sys.exit(main())
