"""What a standby node answers: where the leader is, and its own status.

A standby keeps its listeners so clients and operators can reach any node. It has no
store open (the leader is writing it); every data request and every control request
that would read or change the store is answered NOT_LEADER with the leader's client
address, so clients go there. STATUS answers with the election's view (role, leader,
epoch, lease left).

Implements the part of the engine's interface the I/O layer uses; no I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnap_client.protocol.session import Request
from csnapd.engine.service import Out, Outcome


class StandbyEngine:
    """The engine of a node that does not lead (see the module docstring)."""

    store = None

    def __init__(self, ha_status: Callable[[], dict[str, Any]]) -> None:
        self.ha_status = ha_status
        self.conns: set[int] = set()
        self.counters: dict[str, int] = {}
        self.now = 0.0
        self._now: list[Out] = []
        self.closing: set[int] = set()
        self.shutdown_requested = False
        self.stopped = ""
        self._control: set[int] = set()

    def open_conn(self, conn_id: int, control: bool = False, peer: str = "",
                  privileged: bool = True) -> None:
        self.conns.add(conn_id)
        if control:
            self._control.add(conn_id)

    def close_conn(self, conn_id: int, now: float) -> None:
        self.conns.discard(conn_id)
        self._control.discard(conn_id)

    def handle(self, conn_id: int, req: Request, now: float) -> None:
        self.counters[req.op] = self.counters.get(req.op, 0) + 1
        if conn_id in self._control:
            if req.op == "STATUS":
                self._now.append((conn_id, m.ok(req.id, self.status())))
                return
            if req.op == "SHUTDOWN":
                self.shutdown_requested = True
                self._now.append((conn_id, m.ok(req.id, "shutting down")))
                return
        self._now.append((conn_id, self.not_leader(req.id)))

    def not_leader(self, rid: int) -> dict[str, Any]:
        """The NOT_LEADER error, naming the leader when the election knows one."""
        st = self.ha_status()
        leader, address = st.get("leader"), st.get("leader_address")
        if leader and address:
            text = f"this node ({st['node']}) is a standby; the leader is {leader} at {address}"
        else:
            text = f"this node ({st['node']}) is a standby and no leader is elected yet"
        return m.reply_error(rid, ErrorCode.NOT_LEADER, text, address or None)

    def status(self) -> dict[str, Any]:
        return {"ha": self.ha_status(), "role": "standby", "requests": dict(self.counters)}

    def tick(self, now: float) -> None:
        self.now = now

    def background(self, budget_leaves: int = 4) -> bool:
        return False

    def take(self) -> Outcome:
        out = Outcome(self._now, [], self.closing, self.shutdown_requested)
        self._now, self.closing = [], set()
        return out
