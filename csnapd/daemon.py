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
import errno
import logging
import os
import signal
import socket
import ssl
import sys
import time

from csnap_client.protocol.auth import read_secret
from csnap_client.units import parse_size
from csnapd.config import apply_config
from csnapd.engine.service import Engine
from csnapd.explain import (
    create_file_hint,
    device_problem,
    format_problem,
    init_hint,
    not_a_store,
    suggested_store_size,
)
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
from csnapd.store.errors import FormatError, StoreError
from csnapd.store.paths import open_store
from csnapd.store.store import Store

log = logging.getLogger("csnapd")


class StartupError(Exception):
    """csnapd cannot start serving; the message says why and what to do."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of --listen -> (host, port); ValueError naming the option if malformed."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen wants HOST:PORT with a port up to 65535, not {text!r}")
    return host.strip("[]"), int(port)


def check_devices(args: argparse.Namespace) -> None:
    """Refuse, in words naming the device, a store or origin that cannot be opened."""
    problem = device_problem("origin", args.origin, writable=False)
    if problem and not os.path.lexists(args.origin):
        raise StartupError(f"{problem}; give the origin device or file the store was made "
                           "for with --origin")
    if problem:
        raise StartupError(problem)
    problem = device_problem("store", args.store, writable=True)
    if problem and not os.path.lexists(args.store):
        size = suggested_store_size(args.origin)
        raise StartupError(f"{problem}; to make a new store: "
                           f"{create_file_hint(args.store, size)}, then run "
                           f"{init_hint(args.store, args.origin)}")
    if problem:
        raise StartupError(problem)


def prepare_control(path: str) -> str | None:
    """Create the control socket's directory if needed; return it if csnapd created it.

    Done before the store is opened, so a user who may not create the default
    /run/csnapd learns it at once (with the --control way out), and so a clean stop
    can remove a directory csnapd made itself and leave nothing behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if control_in_use(path):
        raise StartupError(f"control socket {path} is in use: another csnapd is running with "
                           "it; stop that one, or give this one another --control PATH")
    if os.path.isdir(directory):
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StartupError(f"cannot create the control socket {path}: this user may not "
                               f"write to {directory}; run csnapd as root, or give "
                               "--control PATH in a directory you can write (e.g. "
                               "--control ./csnapd.sock)")
        return None
    try:
        os.makedirs(directory, mode=0o700)
    except OSError as exc:
        raise StartupError(f"cannot create the control socket directory {directory}: "
                           f"{exc.strerror or exc}; run csnapd as root, or give --control "
                           "PATH in a directory you can write (e.g. --control ./csnapd.sock)"
                           ) from None
    return directory


def control_in_use(path: str) -> bool:
    """True if a process accepts connections on the unix socket ``path``.

    A socket file nobody listens on is what a killed csnapd leaves; csnapd replaces
    that one, but never the socket of a csnapd that is still running.
    """
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except PermissionError:
            raise StartupError(f"control socket {path} exists and this user may not use it "
                               "(another user's csnapd?); give --control PATH") from None
        except OSError:
            return False
    return True


def open_for_serving(args: argparse.Namespace, must_lock: bool = True) -> Store:
    """Open and recover the store, logging what recovery did; SystemExit(1) saying why not.

    ``must_lock=False`` (HA mode, where the election decides who writes) opens the
    store even when another process holds its flock: a stalled old leader does.
    """
    try:
        store = open_store(args.store, args.origin, cache_size=parse_size(args.cache_size),
                           must_lock=must_lock)
    except BlockingIOError:
        raise SystemExit(f"csnapd: {args.store} is in use by another process "
                         "(another csnapd holds its lock); refusing to start") from None
    except FormatError as exc:
        problem = format_problem(args.store, args.origin, exc)
        if not not_a_store(args.store, args.origin):
            problem = f"cannot open store: {problem}"
        raise SystemExit(f"csnapd: {problem}") from None
    except (OSError, StoreError, ValueError) as exc:
        raise SystemExit(f"csnapd: cannot open store {args.store}: {exc}") from None
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
    engine = Engine(store, epoch=store.sb.generation, lease=args.lease,
                    lock_lease=args.lock_lease, now=time.monotonic(), on_full=args.on_full)
    server = Server(engine, Limits(args.max_inflight, args.max_connections,
                                   args.identify_timeout, args.frame_timeout),
                    secret=read_secret(args.secret_file) if args.secret_file else None,
                    ssl_context=tls_context(args))
    if args.metrics:
        try:
            server.metrics = start_metrics_server(*parse_address(args.metrics), engine)
        except OSError as exc:
            raise StartupError(listen_problem("--metrics", args.metrics, exc)) from None
    addr = await start_listeners(server, args)
    log.info("serving store=%s origin=%s listen=%s:%d control=%s chunk_size=%d", args.store,
             args.origin, addr[0], addr[1], args.control, store.chunk_size)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, server, sig)
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


async def start_listeners(server: Server, args: argparse.Namespace) -> tuple[str, int]:
    """Listen on --listen and the --control socket (mode 0600); the bound TCP address."""
    host, port = parse_listen(args.listen)
    try:
        tcp = await server.listen_tcp(host, port)
    except OSError as exc:
        raise StartupError(listen_problem("--listen", args.listen, exc)) from None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.control)
    old = os.umask(0o177)
    try:
        await server.listen_unix(args.control)
    except OSError as exc:
        raise StartupError(f"cannot create the control socket {args.control}: "
                           f"{exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(args.control, 0o600)
    return tcp.sockets[0].getsockname()[:2]


def listen_problem(option: str, address: str, exc: OSError) -> str:
    """Why csnapd cannot listen on ``address`` (given with ``option``), and what to do."""
    if exc.errno == errno.EADDRINUSE:
        port = address.rpartition(":")[2]
        return (f"cannot listen on {address}: the address is in use (another csnapd, or "
                f"another program, listens there; 'ss -ltnp sport = :{port}' shows which); "
                f"stop it or choose another address with {option}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return (f"cannot listen on {address}: that is not an address of this host; "
                f"give one of its addresses (or 0.0.0.0) with {option}")
    if exc.errno == errno.EACCES:
        return (f"cannot listen on {address}: permission denied (ports below 1024 need "
                f"root); choose another port with {option}")
    return f"cannot listen on {address}: {exc.strerror or exc}"


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


def on_signal(server: Server, sig: int) -> None:
    """SIGTERM/SIGINT: stop serving (what is in flight finishes)."""
    log.info("received %s", signal.Signals(sig).name)
    server.stopping.set()



def main(argv: list[str] | None = None) -> int:
    args = apply_config(build_parser(), argv)  # --config file; flags override it
    setup_logging(args.log_level, args.log_format)
    try:
        parse_listen(args.listen)
        if args.metrics:
            parse_address(args.metrics)
        try:
            parse_size(args.cache_size)
        except ValueError as exc:
            raise ValueError(f"--cache-size: {exc}") from None
        if args.secret_file:
            read_secret(args.secret_file)
        tls_context(args)
    except (ValueError, OSError, ssl.SSLError) as exc:
        print(f"csnapd: {exc}", file=sys.stderr)
        return 2
    try:
        check_devices(args)
        created = prepare_control(args.control)
    except StartupError as exc:
        print(f"csnapd: {exc}", file=sys.stderr)
        return 1
    if args.etcd:
        from csnapd.hanode import serve_ha
        try:
            import uvloop
            return uvloop.run(serve_ha(args))
        except StartupError as exc:
            log.error("%s", exc)
            return 1
        finally:
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(created)
    try:
        store = open_for_serving(args)
        try:
            import uvloop
            return uvloop.run(serve(args, store))
        except StartupError as exc:
            log.error("%s", exc)
            store.close()
            return 1
        except OSError as exc:
            log.error("cannot serve: %s", exc)
            store.close()
            return 1
    finally:
        if created:
            with contextlib.suppress(OSError):  # not empty: something else lives there
                os.rmdir(created)


if __name__ == "__main__":
    sys.exit(main())
