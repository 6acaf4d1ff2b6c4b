"""Snapshot create and delete as advice flows: one at a time, as a small state machine.

A create (NEW_SNAPSHOT) is advised to every origin connection, a delete
(DELETE_SNAPSHOT) to every connection of that snapshot, a clone (NEW_CLONE) to every
connection of the snapshot it is made from (their cached store addresses, which they
may write without asking, stop being that snapshot's alone). Each advised connection
must acknowledge; the flow is *ready* when none is left awaiting, either because
all acknowledged, or their connections closed, or the deadline passed and the
engine cut them off. Only then does the engine complete it (creates the snapshot,
copying out first what clients that did not acknowledge may still write; or lets
the delete pass free the deleted snapshot's chunks).

States and transitions (``Phase``)::

    phase      event                               next       effect
    (none)     begin(advice)                       AWAITING   advice sent to `awaiting`
    AWAITING   acked(conn) / dropped(conn)         AWAITING   conn leaves `awaiting`
    AWAITING   join(conn) (create only)            AWAITING   conn joins `awaiting`
    AWAITING   overdue(now), deadline passed       AWAITING   returns conns to cut off
    AWAITING   take_ready(), awaiting empty        (none)     the engine completes it

While a create is AWAITING, new origin writes are held (``hold``) and run again
after it completes: an approval given now would miss the new snapshot's copy-out.
While a clone is AWAITING, new writes to its parent are held the same way.
Requests for another flow wait in ``queue``.

Plain data and calls, no I/O, no store access.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any

NEW_SNAPSHOT = "NEW_SNAPSHOT"
DELETE_SNAPSHOT = "DELETE_SNAPSHOT"
NEW_CLONE = "NEW_CLONE"


class Phase(enum.Enum):
    AWAITING = "awaiting acknowledgements"


@dataclass(slots=True)
class Advice:
    """One create or delete in progress."""

    advice_id: int
    kind: str
    name: str
    reply_to: tuple[int, int]  # (control connection, request id)
    deadline: float
    awaiting: set[int] = field(default_factory=set)
    entry: Any = None  # the deleted snapshot's table entry (delete); the parent's (clone)
    tag: int | None = None
    priority: int = 0
    phase: Phase = Phase.AWAITING
    ticket: int = 0  # store transaction of the change made when it began (delete)


class AdviceFlow:
    """The advice in progress, the ones queued behind it, and origin writes held by it."""

    def __init__(self) -> None:
        self.current: Advice | None = None
        self.queue: deque[tuple[int, Any]] = deque()  # (control conn, request) waiting
        self.held: list[tuple[int, Any]] = []  # (conn, origin write request) held by a create
        self._next_id = 1

    @property
    def busy(self) -> bool:
        return self.current is not None

    @property
    def creating(self) -> bool:
        """A create is waiting for acknowledgements: origin writes must be held."""
        return self.current is not None and self.current.kind == NEW_SNAPSHOT

    def cloning(self, slot: int) -> bool:
        """A clone of snapshot ``slot`` is waiting for acknowledgements: writes to that
        snapshot must be held."""
        adv = self.current
        return adv is not None and adv.kind == NEW_CLONE and adv.entry.slot == slot

    def new_id(self) -> int:
        advice_id, self._next_id = self._next_id, self._next_id + 1
        return advice_id

    # -- transitions -------------------------------------------------------
    def begin(self, adv: Advice) -> None:
        if self.current is not None:
            raise RuntimeError("an advice is already in progress")
        self.current = adv

    def acked(self, conn_id: int, advice_id: int) -> bool:
        """``conn_id`` acknowledged ``advice_id``; True if it was awaited."""
        adv = self.current
        if adv is None or adv.advice_id != advice_id or conn_id not in adv.awaiting:
            return False
        adv.awaiting.discard(conn_id)
        return True

    def dropped(self, conn_id: int) -> None:
        """A connection closed: it is no longer awaited, and its held writes go."""
        if self.current is not None:
            self.current.awaiting.discard(conn_id)
        self.held = [(c, r) for c, r in self.held if c != conn_id]
        self.queue = deque((c, r) for c, r in self.queue if c != conn_id)

    def join(self, conn_id: int) -> Advice | None:
        """An origin client holding approvals identified during a create: await it too."""
        adv = self.current
        if adv is None or adv.kind != NEW_SNAPSHOT:
            return None
        adv.awaiting.add(conn_id)
        return adv

    def overdue(self, now: float) -> set[int]:
        """Connections to cut off because the deadline passed (they leave `awaiting`)."""
        adv = self.current
        if adv is None or not adv.awaiting or now < adv.deadline:
            return set()
        late, adv.awaiting = adv.awaiting, set()
        return late

    def take_ready(self) -> Advice | None:
        """The current advice if nobody is awaited any more (it is no longer current)."""
        adv = self.current
        if adv is None or adv.awaiting:
            return None
        self.current = None
        return adv

    # -- holding and queueing -------------------------------------------------
    def hold(self, conn_id: int, req: Any) -> None:
        self.held.append((conn_id, req))

    def release_held(self) -> list[tuple[int, Any]]:
        held, self.held = self.held, []
        return held

    def enqueue(self, conn_id: int, req: Any) -> None:
        self.queue.append((conn_id, req))

    def next_queued(self) -> tuple[int, Any] | None:
        return self.queue.popleft() if self.queue else None
