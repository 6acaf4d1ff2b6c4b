"""What serving needs, for csnapd alone and for an HA node: checks of the devices and
the control socket before anything is opened, opening the store for serving, the
listeners, TLS, and the stop signals. Every failure is a StartupError in words that
say what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import socket
import ssl

from csnap_client.units import parse_size
from csnapd.explain import (
    create_file_hint,
    device_problem,
    format_problem,
    init_hint,
    not_a_store,
    suggested_store_size,
)
from csnapd.net.server import Server
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
