"""csnap-io: read or write bytes of a csnap volume (the origin or a snapshot).

Examples::

    csnap-io --volume origin --origin o.img --store s.img write --offset 1M < data
    csnap-io --volume nightly --origin o.img --store s.img read --offset 0 --length 4K > out

Defaults from the environment: ``CSNAP_SERVER`` (host:port, else 127.0.0.1:4270),
``CSNAP_ORIGIN`` and ``CSNAP_STORE`` (device paths). Sizes accept K, M, G, T suffixes.
Exit codes: 0 ok, 1 server or I/O error, 2 usage, 3 cannot connect, 4 wrong device (the
origin or store given is not the server's; nothing was read or written).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys

import csnap_client
from csnap_client.protocol import ProtocolError, RemoteError, WrongDeviceError
from csnap_client.protocol.auth import read_secret
from csnap_client.units import parse_size

DEFAULT_SERVER = "127.0.0.1:4270"
EXIT_SERVER, EXIT_USAGE, EXIT_CONNECT, EXIT_WRONG_DEVICE = 1, 2, 3, 4
BLOCK = 4 << 20  # bytes per read/write request issued by the tool


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="csnap-io", description="Read or write a csnap volume through csnapd.",
        epilog="Environment: CSNAP_SERVER (default 127.0.0.1:4270), CSNAP_ORIGIN, CSNAP_STORE "
               "give the defaults of --server, --origin, --store. Sizes take K/M/G/T "
               "suffixes. Exit codes: 0 ok, 1 server or I/O error, 2 usage, 3 cannot connect, "
               "4 wrong device (the origin or store is not the server's).")
    p.add_argument("--server", default=os.environ.get("CSNAP_SERVER", DEFAULT_SERVER),
                   metavar="HOST:PORT", help="csnapd data address (default %(default)s)")
    p.add_argument("--volume", required=True,
                   help='"origin", a snapshot name, or a snapshot tag (digits)')
    p.add_argument("--origin", default=os.environ.get("CSNAP_ORIGIN"),
                   help="origin device or file (default $CSNAP_ORIGIN)")
    p.add_argument("--store", default=os.environ.get("CSNAP_STORE"),
                   help="snapshot store device or file (default $CSNAP_STORE)")
    p.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds")
    p.add_argument("--secret-file", default=os.environ.get("CSNAP_SECRET_FILE"),
                   help="shared secret for servers started with --secret-file "
                        "(env CSNAP_SECRET_FILE)")
    p.add_argument("--tls-ca", default=os.environ.get("CSNAP_TLS_CA"),
                   help="connect over TLS, trusting this CA file (env CSNAP_TLS_CA)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("read", help="write LENGTH bytes from OFFSET to stdout")
    r.add_argument("--offset", default="0", help="byte offset (default 0)")
    r.add_argument("--length", required=True, help="bytes to read")
    w = sub.add_parser("write", help="write stdin at OFFSET")
    w.add_argument("--offset", default="0", help="byte offset (default 0)")
    return p


def parse_server(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--server must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def volume_ref(text: str) -> str | int:
    """A string of digits is a snapshot tag; anything else a name (or "origin")."""
    return int(text) if text.isdigit() else text


async def run(args: argparse.Namespace, host: str, port: int) -> int:
    """Do the transfer; returns the number of bytes moved."""
    offset = parse_size(args.offset)
    secret = read_secret(args.secret_file) if args.secret_file else None
    tls = ssl.create_default_context(cafile=args.tls_ca) if args.tls_ca else None
    async with await csnap_client.connect(host, port, volume=volume_ref(args.volume),
                                          origin=args.origin, store=args.store,
                                          timeout=args.timeout, reconnect_timeout=30.0,
                                          secret=secret, ssl=tls) as vol:
        if args.command == "read":
            length = parse_size(args.length)
            out = sys.stdout.buffer
            done = 0
            while done < length:
                n = min(BLOCK, length - done)
                out.write(await vol.read(offset + done, n))
                done += n
            out.flush()
            return done
        done = 0
        stdin = sys.stdin.buffer
        while block := stdin.read(BLOCK):
            await vol.write(offset + done, block)
            done += len(block)
        await vol.flush()
        return done


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csnap-io`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = parse_server(args.server)
        if not args.origin:
            raise ValueError("--origin (or $CSNAP_ORIGIN) is required")
        if not args.store and args.volume != "origin":
            raise ValueError("--store (or $CSNAP_STORE) is required for a snapshot")
        parse_size(args.offset)
        if args.command == "read":
            parse_size(args.length)
    except ValueError as exc:
        print(f"csnap-io: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(run(args, host, port))
    except ValueError as exc:  # range outside the volume
        print(f"csnap-io: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WrongDeviceError as exc:
        print(f"csnap-io: {exc.message}", file=sys.stderr)
        return EXIT_WRONG_DEVICE
    except (RemoteError, ProtocolError) as exc:
        print(f"csnap-io: server error: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except ConnectionRefusedError as exc:
        print(f"csnap-io: cannot connect to {args.server}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_CONNECT
    except (ConnectionError, TimeoutError) as exc:
        print(f"csnap-io: connection to {args.server} failed: {exc}", file=sys.stderr)
        return EXIT_CONNECT
    except OSError as exc:
        print(f"csnap-io: I/O error: {exc}", file=sys.stderr)
        return EXIT_SERVER
    return 0


if __name__ == "__main__":
    sys.exit(main())
