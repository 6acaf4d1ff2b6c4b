"""csnap-nbd: serve the csnap origin and its snapshots to NBD clients.

Example::

    csnap-nbd --server 127.0.0.1:4270 --origin data/origin.img --store data/store.img \\
              --listen 127.0.0.1:10809
    qemu-img info nbd://127.0.0.1:10809/monday

Export names: ``origin`` (also the default, empty name) and every live snapshot by name
or by tag. Snapshots created later appear without a restart. ``--server`` may list the
csnapd nodes of a high-availability set (``--server h1:4270,h2:4270``): every session
follows the elected leader, and NBD clients see a pause, not an error, while the lead
moves. See docs/nbd.md.
Exit codes: 0 clean stop (SIGTERM/SIGINT), 2 usage, 3 cannot reach csnapd or listen,
4 wrong device (--origin or --store is not the server's).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys

from csnap_client.addresses import Address, parse_address_list
from csnap_client.protocol import WrongDeviceError
from csnap_client.protocol.auth import read_secret
from csnap_client.version import add_version_option
from csnap_nbd.exports import Gateway
from csnap_nbd.server import NbdServer

DEFAULT_SERVER = "127.0.0.1:4270"
DEFAULT_LISTEN = "127.0.0.1:10809"
EXIT_USAGE, EXIT_CONNECT, EXIT_WRONG_DEVICE = 2, 3, 4

log = logging.getLogger("csnap_nbd")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="csnap-nbd", description="NBD gateway for csnap volumes (origin and snapshots).",
        epilog="Export names: 'origin' (also the default, empty name) and every live snapshot "
               "by name or tag; snapshots created later appear without a restart. "
               "Environment: CSNAP_SERVER, CSNAP_ORIGIN, CSNAP_STORE, CSNAP_SECRET_FILE, "
               "CSNAP_TLS_CA give the defaults of the options of the same name. Exit codes: "
               f"0 clean stop (SIGTERM/SIGINT), {EXIT_USAGE} usage, {EXIT_CONNECT} cannot "
               f"reach csnapd or cannot listen, {EXIT_WRONG_DEVICE} wrong device (--origin or "
               "--store is not the server's). See docs/nbd.md.")
    add_version_option(p)
    p.add_argument("--server", default=os.environ.get("CSNAP_SERVER", DEFAULT_SERVER),
                   metavar="HOST:PORT[,HOST:PORT...]",
                   help="csnapd data address, or a comma list of the nodes of a "
                        "high-availability set (the leader is found and followed); "
                        "IPv6 as [ADDR]:PORT (default %(default)s)")
    p.add_argument("--origin", default=os.environ.get("CSNAP_ORIGIN"), required=False,
                   metavar="PATH", help="origin device or file (default $CSNAP_ORIGIN)")
    p.add_argument("--store", default=os.environ.get("CSNAP_STORE"), required=False,
                   metavar="PATH", help="snapshot store device or file (default $CSNAP_STORE)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="HOST:PORT", default=None,
                       help=f"TCP address to serve NBD on (default {DEFAULT_LISTEN})")
    where.add_argument("--unix", metavar="PATH", default=None,
                       help="serve NBD on this unix socket instead of TCP")
    p.add_argument("--read-only", action="store_true",
                   help="refuse every write (exports are announced read-only)")
    p.add_argument("--secret-file", default=os.environ.get("CSNAP_SECRET_FILE"),
                   metavar="PATH", help="shared secret for a csnapd started with --secret-file")
    p.add_argument("--tls-ca", default=os.environ.get("CSNAP_TLS_CA"), metavar="PATH",
                   help="reach csnapd over TLS, trusting this CA file")
    p.add_argument("--io-threads", type=int, default=8, metavar="N",
                   help="data I/O threads per open volume (default %(default)s)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"],
                   help="least important log lines shown (default info)")
    return p


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    """``host:port`` -> (host, port); ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{what} must be HOST:PORT (port up to 65535), not {text!r}")
    return host.strip("[]"), int(port)


def parse_servers(text: str) -> list[Address]:
    """``--server``: one ``host:port`` or a comma list of them; ValueError if malformed."""
    return parse_address_list(text, "--server")


async def serve(args: argparse.Namespace) -> int:
    """Connect to csnapd, listen, and serve until SIGTERM/SIGINT."""
    (host, port), *others = parse_servers(args.server)
    options: dict = {}
    if others:
        options["servers"] = others
    if args.secret_file:
        options["secret"] = read_secret(args.secret_file)
    if args.tls_ca:
        options["ssl"] = ssl.create_default_context(cafile=args.tls_ca)
    gateway = Gateway(host, port, args.origin, args.store, read_only=args.read_only,
                      io_threads=args.io_threads, **options)
    try:
        await gateway.start()
    except WrongDeviceError as exc:
        print(f"csnap-nbd: {exc.message}", file=sys.stderr)
        await gateway.close()
        return EXIT_WRONG_DEVICE
    except (OSError, TimeoutError, ConnectionError) as exc:
        print(f"csnap-nbd: cannot reach csnapd at {args.server}: {exc} (is csnapd running, "
              "listening on that address? give it with --server or CSNAP_SERVER)",
              file=sys.stderr)
        return EXIT_CONNECT
    server = NbdServer(gateway)
    try:
        if args.unix:
            await server.listen_unix(args.unix)
            where = args.unix
        else:
            lhost, lport = parse_hostport(args.listen or DEFAULT_LISTEN, "--listen")
            addrs = await server.listen_tcp(lhost, lport)
            where = ", ".join(f"{a[0]}:{a[1]}" for a in addrs)
    except OSError as exc:
        print(f"csnap-nbd: cannot listen: {exc}", file=sys.stderr)
        await gateway.close()
        return EXIT_CONNECT
    log.info("serving NBD on %s (origin %d bytes, chunk %d bytes)%s", where, gateway.size,
             gateway.chunk_size, " read-only" if args.read_only else "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await server.close()
    await gateway.close()
    if args.unix:
        try:
            os.unlink(args.unix)
        except OSError:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``csnap-nbd`` console script."""
    args = build_parser().parse_args(argv)
    if not args.origin or not args.store:
        print("csnap-nbd: --origin and --store (or CSNAP_ORIGIN, CSNAP_STORE) are required",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        parse_servers(args.server)
        if args.listen:
            parse_hostport(args.listen, "--listen")
    except ValueError as exc:
        print(f"csnap-nbd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s csnap-nbd %(levelname)s %(message)s")
    try:
        import uvloop
        return uvloop.run(serve(args))
    except ImportError:
        return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
