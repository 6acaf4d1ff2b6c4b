"""The leader's own expiry timer: it must demote the leader however the loop's timers
fire (a timer that fires a little early once left a leader leading past its lease
while etcd was unreachable, until etcd came back)."""

from __future__ import annotations

import asyncio

from csnapd.ha.election import Election, Role


class _NoEtcd:
    async def revoke(self, lease: int) -> None:  # noqa: ARG002
        return None


async def test_an_early_expiry_timer_is_rearmed_and_the_leader_steps_down():
    now = [100.0]
    demoted: list[str] = []

    async def on_demoted(reason: str) -> None:
        demoted.append(reason)

    async def on_elected(epoch: int) -> None:  # noqa: ARG001
        return None

    e = Election(_NoEtcd(), "u", "n", "127.0.0.1:1", 1.0, on_elected, on_demoted,
                 clock=lambda: now[0])
    e.role, e.valid_until = Role.LEADER, 100.5
    e._expired()  # fires early: the lease still runs
    assert e.role is Role.LEADER and e._expiry is not None
    now[0] = 100.6  # the moment has passed
    e._expired()
    await asyncio.sleep(0.01)
    assert e.role is Role.STANDBY
    assert demoted and "could not be renewed" in demoted[0]
