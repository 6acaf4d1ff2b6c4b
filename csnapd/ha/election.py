"""Leader election for one store through etcd: who may write, and until when.

Every node of a store campaigns for the key ``/csnap/<store uuid>/leader``: it grants
itself an etcd lease and creates the key bound to it if the key does not exist. The
node that created it leads; its **epoch** is the key's create revision, which etcd makes
strictly larger at every takeover. The leader keeps its lease alive; the others watch
the key and campaign again when it goes (its lease expired, or the leader revoked it).

The lease is counted **from when each renewal was sent**, never from when its answer
arrived: the leader may write until ``sent + TTL * (1 - MARGIN)`` on its own monotonic
clock, which ends before etcd (counting from when it received the renewal) lets the key
go, even if this host's clock runs up to 25% slow. ``lease_valid()`` is checked right
before every commit is acknowledged, and a timer demotes the leader the moment the lease
runs out without a renewal, whatever etcd or the network are doing.

asyncio, no store access; the daemon reacts to ``on_elected`` / ``on_demoted``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .etcd import EtcdClient, EtcdError

log = logging.getLogger("csnapd.ha")

#: Fraction of the lease a leader gives up, for clock rate differences and delays.
MARGIN = 0.2


class Role(enum.Enum):
    STANDBY = "standby"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """What the leader key says: who leads, where clients reach it, since which epoch."""

    node: str
    address: str
    epoch: int


def leader_key(store_uuid: str) -> bytes:
    return f"/csnap/{store_uuid}/leader".encode()


class Election:
    """This node's part in the election (see the module docstring)."""

    def __init__(self, etcd: EtcdClient, store_uuid: str, node: str, address: str,
                 ttl: float, on_elected: Callable[[int], Awaitable[None]],
                 on_demoted: Callable[[str], Awaitable[None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.etcd, self.key, self.node, self.address = etcd, leader_key(store_uuid), node, address
        self.ttl = max(1, round(ttl))
        self.on_elected, self.on_demoted, self.clock = on_elected, on_demoted, clock
        self.role = Role.STANDBY
        self.epoch = 0
        self.leader: LeaderInfo | None = None
        self.valid_until = 0.0
        self.takeovers = 0
        self.last_takeover_s: float | None = None
        self.etcd_ok = True
        self._lease = 0
        self._expiry: asyncio.TimerHandle | None = None
        self._stopping = False
        self._leader_gone_at: float | None = None
        self._takeover: asyncio.Future[None] | None = None
        self._failures = 0  # takeovers in a row that failed (the store could not be opened)
        self._retry_at = 0.0

    # -- queries -----------------------------------------------------------
    def lease_valid(self) -> bool:
        """True while this node leads and its lease (counted from sending) has not run out."""
        return self.role is Role.LEADER and self.clock() < self.valid_until

    def lease_left(self) -> float:
        return max(0.0, self.valid_until - self.clock()) if self.role is Role.LEADER else 0.0

    def status(self) -> dict[str, Any]:
        leader = self.leader
        return {"role": self.role.value, "node": self.node, "epoch": self.epoch,
                "leader": leader.node if leader else None,
                "leader_address": leader.address if leader else None,
                "leader_epoch": leader.epoch if leader else None,
                "lease_left_s": round(self.lease_left(), 3), "etcd_reachable": self.etcd_ok,
                "takeovers": self.takeovers, "last_takeover_s": self.last_takeover_s}

    # -- the loop ----------------------------------------------------------
    async def run(self) -> None:
        """Campaign, lead and watch until ``stop``."""
        while not self._stopping:
            try:
                if self.role is Role.LEADER:
                    await self._renew()
                else:
                    await self._watch_and_campaign()
                self.etcd_ok = True
            except EtcdError as exc:
                if self.etcd_ok:
                    log.warning("etcd: %s", exc)
                self.etcd_ok = False
            await asyncio.sleep(self._interval())

    def _interval(self) -> float:
        return self.ttl / 3 if self.role is Role.LEADER else min(0.25, self.ttl / 4)

    async def _watch_and_campaign(self) -> None:
        kv = await self.etcd.get(self.key)
        if kv is not None:
            self.leader = _decode(kv.value, kv.create_revision)
            self._leader_gone_at = None
            return
        if self.leader is not None and self._leader_gone_at is None:
            self._leader_gone_at = self.clock()
        if self.clock() < self._retry_at:
            return  # our last takeover failed: give the other nodes the first chance
        sent = self.clock()
        lease, granted = await self.etcd.grant(self.ttl)
        value = json.dumps({"node": self.node, "address": self.address}).encode()
        won, now = await self.etcd.create(self.key, value, lease)
        if not won:
            await self.etcd.revoke(lease)
            if now is not None:
                self.leader = _decode(now.value, now.create_revision)
            return
        assert now is not None
        self._lease, self.epoch, self.role = lease, now.create_revision, Role.LEADER
        self.valid_until = sent + granted * (1 - MARGIN)
        self._arm_expiry()
        self.leader = LeaderInfo(self.node, self.address, self.epoch)
        gone = self._leader_gone_at
        log.warning("elected leader of the store (epoch %d)%s", self.epoch,
                    f", {self.clock() - gone:.2f}s after the old leader's key went"
                    if gone is not None else "")
        self.takeovers += 1
        # The takeover (recovery of the store) runs beside the renewals: a long replay
        # must not let the lease run out.
        self._takeover = asyncio.ensure_future(self._take_over(self.epoch, gone))

    async def _take_over(self, epoch: int, gone: float | None) -> None:
        started = self.clock()
        try:
            await self.on_elected(epoch)
        except Exception as exc:  # noqa: BLE001 - cannot lead: give the key up
            self._failures += 1
            wait = min(30.0, self.ttl * 2 ** self._failures)
            self._retry_at = self.clock() + wait
            log.error("could not take over: %s; standing down (campaigning again in %.0fs "
                      "at the earliest)", exc, wait)
            if self.epoch == epoch:
                await self._step_down(f"takeover failed: {exc}", revoke=True)
            return
        self._failures = 0
        self.last_takeover_s = round(self.clock() - started + (
            started - gone if gone is not None else 0.0), 3)

    async def _renew(self) -> None:
        sent = self.clock()
        ttl = await self.etcd.keepalive(self._lease)
        if ttl <= 0:
            await self._step_down("the etcd lease expired", revoke=False)
            return
        if self.role is Role.LEADER:
            self.valid_until = max(self.valid_until, sent + ttl * (1 - MARGIN))
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        delay = max(0.0, self.valid_until - self.clock()) + 0.001
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        if self.role is not Role.LEADER:
            return
        if self.clock() < self.valid_until:
            # the loop's timers may fire a little early (millisecond granularity), or
            # a renewal moved the end: look again then, never let the moment pass
            self._arm_expiry()
            return
        asyncio.ensure_future(self._step_down(
            "the lease could not be renewed in time (etcd unreachable?)", revoke=False))

    async def _step_down(self, reason: str, revoke: bool) -> None:
        if self.role is not Role.LEADER:
            return
        log.error("no longer the leader (epoch %d): %s", self.epoch, reason)
        self.role, self.valid_until = Role.STANDBY, 0.0
        if self._expiry is not None:
            self._expiry.cancel()
        lease, self._lease = self._lease, 0
        try:
            await self.on_demoted(reason)
        finally:
            if revoke and lease:
                try:
                    await self.etcd.revoke(lease)
                except EtcdError:
                    pass

    async def step_down(self, reason: str) -> None:
        """Stop leading now (a write found a newer epoch on disk); the key stays until
        its lease runs out, so no node takes over while this one may still be writing."""
        await self._step_down(reason, revoke=False)

    async def stop(self) -> None:
        """Leave the election (a clean shutdown gives the key up at once)."""
        self._stopping = True
        if self.role is Role.LEADER:
            await self._step_down("shutting down", revoke=True)


def _decode(value: bytes, epoch: int) -> LeaderInfo:
    try:
        data = json.loads(value)
        return LeaderInfo(str(data.get("node", "?")), str(data.get("address", "")), epoch)
    except ValueError:
        return LeaderInfo("?", "", epoch)
