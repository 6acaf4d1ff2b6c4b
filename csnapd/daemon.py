"""csnapd: open and recover the store, serve clients, shut down cleanly.

Startup order: take the store's exclusive lock (a second csnapd on the same
store is refused), replay the journal and log what was replayed, mark the
store busy, and only then listen.  SIGTERM/SIGINT stop accepting, let the
queued requests finish, commit, checkpoint, mark the store clean, exit 0.
If the store or origin is replaced under it (csnapd/engine/watch.py), it
answers every waiting request SHUTTING_DOWN, writes nothing more to the
store and exits EXIT_DEVICE_CHANGED (3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
import time

from csnap_client.protocol.auth import read_secret
from csnap_client.units import parse_size
from csnapd.config import apply_config
from csnapd.engine.service import Engine
from csnapd.logsetup import setup_logging
from csnapd.metrics import parse_address, start_metrics_server
from csnapd.net.server import Limits, Server
from csnapd.options import (  # noqa: F401 - re-exported: the daemon's parser and defaults
    DEFAULT_CONTROL,
    DEFAULT_LISTEN,
    EXIT_DEVICE_CHANGED,
    build_parser,
)
from csnapd.store import format as fmt
from csnapd.store.errors import StoreError
from csnapd.store.paths import open_store
from csnapd.store.store import Store

log = logging.getLogger("csnapd")
def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def open_for_serving(args: argparse.Namespace) -> Store:
    try:
        store = open_store(args.store, args.origin, cache_size=parse_size(args.cache_size))
    except BlockingIOError:
        raise SystemExit(f"csnapd: {args.store} is in use by another process "
                         "(another csnapd holds its lock); refusing to start") from None
    except (OSError, StoreError, ValueError) as exc:
        raise SystemExit(f"csnapd: cannot open store: {exc}") from None
    flags = store.sb.flags
    if flags & (fmt.FLAG_CORRUPT | fmt.FLAG_NEEDS_CHECK):
        what = "corrupt" if flags & fmt.FLAG_CORRUPT else "in need of a check after an I/O error"
        store.close()
        raise SystemExit(f"csnapd: {args.store} is marked {what}; run csnap-check --store "
                         f"{args.store} (and --repair if it says so) before serving it again")
    r = store.recovery
    if r.unclean:
        log.warning("store was not shut down cleanly; replayed %d journal transaction(s), "
                    "%d block(s)", r.transactions, r.blocks)
    elif r.transactions:
        log.info("replayed %d journal transaction(s)", r.transactions)
    for note in r.notes:
        log.warning("%s", note)
    for note in r.journal_notes:
        log.warning("journal: %s", note)
    for note in r.info:
        log.info("%s", note)
    if r.upgraded:
        log.info("journal switched to the redundant transaction format (incompatible feature "
                 "0x%x): csnap versions without it can no longer open this store",
                 fmt.INCOMPAT_JOURNAL_V2)
    return store


async def serve(args: argparse.Namespace, store: Store) -> int:
    host, port = parse_listen(args.listen)
    control_dir = os.path.dirname(os.path.abspath(args.control))
    os.makedirs(control_dir, mode=0o700, exist_ok=True)
    engine = Engine(store, epoch=store.sb.generation, lease=args.lease,
                    lock_lease=args.lock_lease, now=time.monotonic(), on_full=args.on_full)
    server = Server(engine, Limits(args.max_inflight, args.max_connections,
                                   args.identify_timeout, args.frame_timeout),
                    secret=read_secret(args.secret_file) if args.secret_file else None,
                    ssl_context=tls_context(args))
    if args.metrics:
        server.metrics = start_metrics_server(*parse_address(args.metrics), engine)
    tcp = await server.listen_tcp(host, port)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    old = os.umask(0o177)
    try:
        await server.listen_unix(args.control)
    finally:
        os.umask(old)
    os.chmod(args.control, 0o600)
    addr = tcp.sockets[0].getsockname()
    log.info("serving store=%s origin=%s listen=%s:%d control=%s chunk_size=%d", args.store,
             args.origin, addr[0], addr[1], args.control, store.chunk_size)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, server, sig)
    runner = loop.create_task(server.run())
    await server.stopping.wait()
    log.info("shutting down: no new connections; finishing what is in flight")
    await server.stop_listening()
    await runner
    server.close_all()
    await loop.run_in_executor(server.worker, store.close)
    server.worker.shutdown()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    if engine.stopped:
        log.error("stopped without writing to the store again (%s); find out which device "
                  "%s and %s name before starting csnapd again", engine.stopped, args.store,
                  args.origin)
        return EXIT_DEVICE_CHANGED
    log.info("store closed cleanly")
    return 0


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """Server TLS context from --tls-cert/--tls-key (and --tls-client-ca), or None."""
    if not args.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        ctx.load_verify_locations(args.tls_client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _on_signal(server: Server, sig: int) -> None:
    log.info("received %s", signal.Signals(sig).name)
    server.stopping.set()


def main(argv: list[str] | None = None) -> int:
    args = apply_config(build_parser(), argv)  # --config file; flags override it
    setup_logging(args.log_level, args.log_format)
    try:
        parse_listen(args.listen)
        if args.metrics:
            parse_address(args.metrics)
        parse_size(args.cache_size)
        if args.secret_file:
            read_secret(args.secret_file)
        tls_context(args)
    except (ValueError, OSError, ssl.SSLError) as exc:
        print(f"csnapd: {exc}", file=sys.stderr)
        return 2
    store = open_for_serving(args)
    try:
        import uvloop
        return uvloop.run(serve(args, store))
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        store.close()
        return 1


if __name__ == "__main__":
    sys.exit(main())
