"""REVERT_SNAPSHOT: making the origin equal to a snapshot, in the background.

The store does the work in batches (store/revert.py); this module is the engine's side:
the request's checks (no origin client may be connected: the origin changes under
it), and the per-batch wait that any origin write has: the batch's copy-outs must be
durable and no snapshot reader may hold a read lock on its chunks before the restore
goes into the next transaction. The engine counts as an origin writer of its own for
the lock table (``CLIENT``).

While a revert runs, origin clients are refused at IDENTIFY (``BUSY``, with the
progress), the snapshot refuses writes, and it can be neither deleted nor squashed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from csnapd.store import revert as rv
from csnapd.store.device import Device
from csnapd.store.errors import LimitError

if TYPE_CHECKING:
    from csnapd.engine.service import Engine

log = logging.getLogger("csnapd.engine")

#: The lock table's client id for the revert's own origin writes (never a real client's:
#: client ids on the wire are uint64, this is a string).
CLIENT = "revert"


class RevertFlow:
    """The batch in flight (its copy-outs made, waiting to be restored), if any."""

    def __init__(self) -> None:
        self.batch: rv.Batch | None = None
        self.ticket = 0
        self.unlocked = False  # no read lock holds its chunks any more
        self.serial = 0
        self.origin: Device | None = None

    def start(self, engine: Engine, ident: str | int) -> dict[str, object]:
        """Check and record a new revert; the answer is durable with the next commit."""
        origin_conns = engine.conns.origin_conns()
        if origin_conns:
            raise LimitError(
                f"{len(origin_conns)} origin client(s) are connected: a revert replaces the "
                "origin's content under them; stop or disconnect them first (they are "
                "refused until the revert is done)")
        entry = rv.start(engine.store, ident)
        log.warning("reverting the origin to snapshot %s (tag %d) in the background; origin "
                    "clients are refused until it is done", entry.name, entry.tag)
        return {"reverting_to": entry.name, "tag": entry.tag}

    def step(self, engine: Engine) -> bool:
        """Advance the revert by at most one batch; True while it has work."""
        store = engine.store
        if not rv.active(store):
            return False
        if self.origin is None:
            self.origin = rv.writable_origin(store)
        if self.batch is None:
            self.batch = rv.prepare(store)
            self.ticket = store.change_ticket
            self.serial += 1
            self.unlocked = engine.locks.wait_write(CLIENT, self.serial, self.batch.ranges)
            return True
        if not self.unlocked or store.durable_ticket < self.ticket:
            return True  # its copy-outs are not durable yet, or a reader still reads there
        name = rv.target(store).name
        last = self.batch.next is None
        rv.apply(store, self.batch, self.origin)
        self.batch = None
        if last:
            log.info("the origin now holds snapshot %s's content: revert done", name)
        return not last

    def unblocked(self, write_id: object) -> None:
        """The lock table let the batch's write go (a reader finished)."""
        if write_id == self.serial:
            self.unlocked = True
