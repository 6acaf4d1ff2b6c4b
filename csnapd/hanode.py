"""csnapd in HA mode (``--etcd``): one node of an active/standby pair on one store.

The node keeps its listeners for its whole life and changes engine with its role:

* **standby** (at start, and after losing the lead): no store open; data clients are
  answered NOT_LEADER naming the leader, the control socket answers ``status``
  (csnapd/ha/standby.py).
* **elected** (``on_elected``): wait a fifth of the lease more (a write the old leader
  started just before its lease ended lands first), open the store without insisting
  on its flock (a SIGSTOPped old leader still holds it), replay its journal, write the
  new epoch into the superblock (``Store.take_over``), and only then serve. Every
  write from then on is fenced: it happens only while the lease, counted from when
  its renewal was *sent*, still runs and no newer epoch is on disk; a write that
  completes after the lease ended is not acknowledged.
* **demoted** (lease lost, etcd unreachable past the lease, a newer epoch on disk):
  stop writing at once, answer every waiting request NOT_LEADER, close the store
  without writing to it, and return to standby.

A clean stop of the leader (SIGTERM, ``csnapctl shutdown``) drains, closes the store
cleanly and only then gives the key up, so the standby takes over at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from typing import Any

from csnap_client.protocol.auth import read_secret
from csnap_client.units import parse_size
from csnapd.engine.service import Engine
from csnapd.ha.election import MARGIN, Election, Role
from csnapd.ha.etcd import EtcdClient
from csnapd.ha.standby import StandbyEngine
from csnapd.metrics import instrument_store, parse_address, start_metrics_server
from csnapd.net.server import Limits, Server
from csnapd.serving import StartupError, on_signal, open_for_serving, start_listeners, tls_context
from csnapd.store.device import FileDevice
from csnapd.store.errors import FencedError, FormatError
from csnapd.store.store import Store
from csnapd.store.superblock import load

log = logging.getLogger("csnapd.ha")


def store_uuid(path: str) -> str:
    """The store's UUID (hex), read without opening it for writing: the election key."""
    dev = FileDevice(path, writable=False)
    try:
        f, _, _ = load(dev)
    except FormatError as exc:
        raise StartupError(f"{exc}; initialise the store with csnap-init first") from None
    finally:
        dev.close()
    return f.uuid.hex()


def advertised(args: argparse.Namespace, bound: tuple[str, int]) -> str:
    """The client address this node announces while it leads."""
    if args.advertise:
        return args.advertise
    host = bound[0]
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"[{host}]:{bound[1]}" if ":" in host else f"{host}:{bound[1]}"


class HANode:
    """One node's roles and the switches between them (see the module docstring)."""

    def __init__(self, args: argparse.Namespace, server: Server) -> None:
        self.args, self.server = args, server
        self.election: Election | None = None
        self.store: Store | None = None
        self.epoch = 0
        self.late_writes = 0
        self.fenced_writes = 0
        self.switching = asyncio.Lock()

    # -- status --------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The election's view plus what fencing did, for STATUS and metrics."""
        st = (self.election.status() if self.election
              else {"role": "standby", "node": self.args.node or socket.gethostname()})
        committer = self.server.committer
        return {**st, "late_writes": self.late_writes + committer.late_writes,
                "fenced_writes": self.fenced_writes}

    def lease_valid(self) -> bool:
        return self.election is not None and self.election.lease_valid()

    # -- becoming the leader -------------------------------------------------
    async def on_elected(self, epoch: int) -> None:
        async with self.switching:
            election = self.election
            assert election is not None
            started = time.monotonic()
            await asyncio.sleep(election.ttl * MARGIN)  # the old leader's last write lands
            loop = asyncio.get_running_loop()
            try:
                store = await loop.run_in_executor(self.server.worker, self._open, epoch)
            except SystemExit as exc:  # open_for_serving's way of saying why not
                raise RuntimeError(str(exc.code)) from None
            if not election.lease_valid():
                await loop.run_in_executor(self.server.worker, store.abandon)
                raise RuntimeError("the lease ended while the store was being recovered")
            args = self.args
            engine = Engine(store, epoch=store.sb.generation, lease=args.lease,
                            lock_lease=args.lock_lease, now=time.monotonic(),
                            on_full=args.on_full)
            engine.ha_status = self.status
            self.store, self.epoch = store, epoch
            if self.server.metrics is not None:
                instrument_store(store, self.server.metrics)
            self.server.switch(engine, lease_ok=self.lease_valid, on_fenced=self._on_fenced)
            log.warning("leading the store under epoch %d (recovery and takeover took %.2fs; "
                        "%d journal transaction(s) replayed)", epoch,
                        time.monotonic() - started, store.recovery.transactions)

    def _open(self, epoch: int) -> Store:
        """Open, recover and take the store over (on the store thread)."""
        store = open_for_serving(self.args, must_lock=False)
        store.fence = self._fence(store, epoch)
        try:
            store.take_over(epoch)
        except BaseException:
            store.abandon()
            raise
        return store

    def _fence(self, store: Store, epoch: int) -> Any:
        """The check before every write to the store (runs on the store thread)."""
        def fence() -> None:
            if not self.lease_valid():
                self.fenced_writes += 1
                raise FencedError(f"the leader lease of epoch {epoch} has ended: this node "
                                  "no longer writes the store")
            disk = store.disk_epoch()
            if disk > epoch:
                self.fenced_writes += 1
                raise FencedError(f"a newer leader (epoch {disk}) has taken the store over; "
                                  f"this node (epoch {epoch}) no longer writes it")
        return fence

    def _on_fenced(self, reason: str) -> None:
        """A write found it may no longer write: step down now (from the loop)."""
        election = self.election
        if election is not None and election.role is Role.LEADER:
            asyncio.ensure_future(election.step_down(reason))

    # -- losing the lead -----------------------------------------------------
    async def on_demoted(self, reason: str) -> None:
        async with self.switching:
            server, store = self.server, self.store
            if store is None:  # not serving (a stop already closed the store)
                return
            committer = server.committer
            committer.fence_off(reason)
            self.late_writes += committer.late_writes
            committer.late_writes = 0
            server.switch(StandbyEngine(self.status))  # nothing reaches the store now
            deadline = time.monotonic() + 10
            while committer.writing is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # the write in flight passed its fence already
            self.late_writes += committer.late_writes
            committer.late_writes = 0
            await asyncio.get_running_loop().run_in_executor(server.worker, store.abandon,
                                                             reason)
            self.store = None
            log.warning("standing by: %s", reason)

    # -- stopping ------------------------------------------------------------
    async def close_store(self) -> None:
        """Clean shutdown of a leader: everything durable, the store marked clean."""
        store = self.store
        if store is None:
            return
        self.store = None
        if store.failed:
            await asyncio.get_running_loop().run_in_executor(self.server.worker, store.abandon)
            return
        await asyncio.get_running_loop().run_in_executor(self.server.worker, store.close)


async def serve_ha(args: argparse.Namespace) -> int:
    """Run one HA node until SIGTERM/SIGINT or ``csnapctl shutdown``."""
    uuid = store_uuid(args.store)
    node_name = args.node or socket.gethostname()
    parse_size(args.cache_size)
    server = Server(StandbyEngine(lambda: {"role": "standby", "node": node_name}),
                    Limits(args.max_inflight, args.max_connections, args.identify_timeout,
                           args.frame_timeout),
                    secret=read_secret(args.secret_file) if args.secret_file else None,
                    ssl_context=tls_context(args))
    node = HANode(args, server)
    server.switch(StandbyEngine(node.status))
    bound = await start_listeners(server, args)
    etcd = EtcdClient([u for u in args.etcd.split(",") if u.strip()])
    election = Election(etcd, uuid, node_name, advertised(args, bound), args.ha_lease,
                        node.on_elected, node.on_demoted)
    node.election = election
    if args.metrics:
        try:
            server.metrics = start_metrics_server(*parse_address(args.metrics),
                                                  lambda: server.engine, store_hooks=False,
                                                  ha=node.status)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {args.metrics}: {exc}") from None
    log.info("HA node %s of store %s: listen=%s:%d advertise=%s control=%s etcd=%s "
             "lease=%.1fs", node_name, uuid, bound[0], bound[1], election.address,
             args.control, args.etcd, election.ttl)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, server, sig)
    campaign = loop.create_task(election.run())
    await server.run()  # until SIGTERM/SIGINT/SHUTDOWN, then what is in flight is durable
    log.info("shutting down")
    await server.stop_listening()
    server.close_all()
    async with node.switching:
        await node.close_store()
    await election.stop()  # gives the key up: the standby takes over at once
    campaign.cancel()
    server.worker.shutdown()
    if server.metrics is not None:
        server.metrics.close()
    with contextlib.suppress(OSError):
        os.unlink(args.control)
    log.info("stopped")
    return 0
