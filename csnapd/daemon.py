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
from csnapd.serving import (  # noqa: F401 - re-exported: older callers import them here
    StartupError,
    check_devices,
    control_in_use,
    listen_problem,
    on_signal,
    open_for_serving,
    parse_listen,
    prepare_control,
    start_listeners,
    tls_context,
)
from csnapd.store.store import Store

log = logging.getLogger("csnapd")


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


def check_ha_options(args: argparse.Namespace) -> None:
    """ValueError naming the option for a malformed --etcd, --ha-lease or --advertise."""
    from csnapd.ha.etcd import EtcdClient
    urls = [u.strip() for u in args.etcd.split(",") if u.strip()]
    try:
        EtcdClient(urls)
    except ValueError as exc:
        raise ValueError(f"--etcd: {exc}") from None
    if not 1 <= args.ha_lease <= 3600:
        raise ValueError(f"--ha-lease wants 1 to 3600 seconds, not {args.ha_lease:g}")
    if args.advertise:
        try:
            parse_listen(args.advertise)
        except ValueError:
            raise ValueError(f"--advertise wants HOST:PORT, not {args.advertise!r}") from None


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
        if args.etcd:
            check_ha_options(args)
        elif args.node or args.advertise:
            raise ValueError("--node and --advertise belong to HA mode: give --etcd URL too")
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
