"""Making the engine's changes durable on the store thread while the loop goes on.

The store changes only memory (on the event loop). Here its changes are **sealed** on
the loop (frozen: later changes go to the next transaction) and the sealed transaction
is written on the store thread; meanwhile the loop keeps answering requests and
changing the store. One write (a sealed transaction or a checkpoint) is in flight at a
time; everything changed while it runs goes into the next seal, so clients share
fsyncs without anyone waiting on purpose (group commit).

Replies that say "done" or reveal a store address wait here for the transaction they
depend on (the store's ticket, from ``take_dependency()``); replies that depend on
nothing undurable go at once.

asyncio only here and in ``server.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from csnapd.engine.service import Engine, Out
from csnapd.store.errors import FencedError
from csnapd.store.seal import Checkpoint, Sealed

log = logging.getLogger("csnapd.net")

#: Group commit: after a commit of several operations, the next one waits at most this
#: long (seconds) for the clients just answered to send their next operation, so one
#: flush serves them and the ones already waiting, instead of alternating between two
#: half-sized groups (each client with one request in flight lands in every other
#: commit). It ends the moment they are all in; a lone client never waits.
HOLD = 0.002


class Committer:
    """The write in flight, and the replies waiting for durable tickets."""

    def __init__(self, engine: Engine, executor: ThreadPoolExecutor,
                 deliver: Callable[[list[Out]], None],
                 lease_ok: Callable[[], bool] | None = None) -> None:
        self.engine, self.store = engine, engine.store
        #: HA: True while this server's lease lets it write; a write that completes
        #: after it ended is not acknowledged (the new leader may not have seen it).
        self.lease_ok = lease_ok
        self.late_writes = 0  # writes that completed after the lease ended (HA)
        self.fenced = ""  # why this server may no longer write (HA), or ""
        #: Called once with the reason when a write finds it may no longer write (HA).
        self.on_fenced: Callable[[str], None] | None = None
        self.executor = executor
        self.deliver = deliver  # sends replies (on the loop)
        self.waiting: list[tuple[int, list[Out]]] = []  # (ticket, replies), tickets ascending
        self.writing: Sealed | Checkpoint | None = None
        #: a checkpoint written in parts, with sealed transactions between them
        self.checkpoint: Checkpoint | None = None
        self.commits = 0
        self.checkpoints = 0
        #: group commit (HOLD): seal once the open transaction has ``hold_ops``
        #: operations or at ``hold_until`` (loop time), whichever comes first
        self.hold_ops = 0
        self.hold_until = 0.0
        self._hold_timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        """Nothing in flight, nothing waiting, nothing changed."""
        if self.store is None:  # an HA standby's engine: nothing to write, ever
            return True
        return (self.writing is None and self.checkpoint is None and not self.waiting
                and not self.store.has_changes())

    def submit(self, replies: list[Out], also: int = 0) -> None:
        """``replies`` (from the operations since the last call, and depending on ticket
        ``also`` too) go once they may."""
        if self.store is None:
            if replies:
                self.deliver(replies)
            return
        ticket = max(self.store.take_dependency(), also)
        if ticket <= self.store.settled_ticket:
            ticket = 0
        if replies:
            if ticket == 0:
                self.deliver(replies)
            elif self.waiting and self.waiting[-1][0] == ticket:
                self.waiting[-1][1].extend(replies)
            else:
                self.waiting.append((ticket, replies))
        self.kick()

    def kick(self) -> None:
        """Start the next write if none runs and there is something to write."""
        if self.store is None:
            return
        if self.writing is not None or self.store.failed:
            if self.store.failed and self.writing is None:
                self._fail_waiting(FencedError(self.fenced) if self.fenced
                                   else RuntimeError(self.store.failed))
            return
        store = self.store
        work: Sealed | Checkpoint | None = None
        try:
            if self.checkpoint is not None:
                # a commit that fits goes before the checkpoint's next part: a long
                # checkpoint never holds the answers waiting for durability back
                if store.has_changes() and store.can_seal():
                    work = store.seal()
                work = work or self.checkpoint
            elif store.wants_checkpoint() or (store.has_changes() and not store.can_seal()):
                work = self.checkpoint = store.seal_checkpoint()
            elif not store.has_changes():
                pass  # nothing to write (the common case of a lookup)
            elif self._holding():
                return
            else:
                work = store.seal()
        except Exception as exc:  # noqa: BLE001 - the store failed: answer, don't crash
            log.error("cannot seal the store's changes: %s", exc)
            self._fail_waiting(exc)
            return
        if work is None:  # nothing left to write: whatever still waits is settled
            if self.waiting:
                self._release()
            return
        self.writing = work
        started = time.monotonic()
        job = work.write_part if isinstance(work, Checkpoint) else work.write
        fut = asyncio.get_running_loop().run_in_executor(self.executor, job)
        fut.add_done_callback(lambda f: self._done(work, f, started))

    def _holding(self) -> bool:
        """Wait a little for the operations of the clients just answered (HOLD)?"""
        if not self.hold_ops:
            return False
        loop = asyncio.get_running_loop()
        if self.store.open_ops >= self.hold_ops or loop.time() >= self.hold_until:
            self.hold_ops = 0
            return False
        if self._hold_timer is None:
            self._hold_timer = loop.call_at(self.hold_until, self._hold_over)
        return True

    def _hold_over(self) -> None:
        self._hold_timer = None
        self.kick()

    def _hold_after(self, sealed: Sealed) -> None:
        """A commit of ``sealed`` is done and answered: hold the next one for its
        operations' clients, expected back soon."""
        if sealed.frozen.ops < 2:
            return
        self.hold_ops = sealed.frozen.ops + self.store.open_ops
        self.hold_until = asyncio.get_running_loop().time() + HOLD

    def _done(self, work: Sealed | Checkpoint, fut: asyncio.Future[Any], started: float) -> None:
        self.writing = None
        exc = fut.exception()
        late = exc is None and self.lease_ok is not None and not self.lease_ok()
        store = self.store
        if isinstance(work, Checkpoint):
            if exc is None and fut.result():
                self.checkpoint = None
                store.checkpoint_done(work)
                self.checkpoints += 1
            elif exc is not None:
                self.checkpoint = None
                store.checkpoint_failed(work, exc)
        elif exc is None:
            store.sealed_done(work)
            self.commits += 1
        else:
            store.sealed_failed(work, exc)
        if late:
            self.late_writes += 1
            exc = FencedError("the lease ended before the write completed: not acknowledged")
            store.detach(str(exc))
        if isinstance(exc, FencedError) and not self.fenced:
            self.fenced = str(exc)
            if self.on_fenced is not None:
                self.on_fenced(self.fenced)
        if exc is not None:
            self._fail_waiting(exc)
        else:
            self._release()
            if isinstance(work, Sealed):
                self._hold_after(work)
        self.kick()

    def _release(self) -> None:
        """Send the replies whose ticket is durable now."""
        durable = self.store.settled_ticket
        out: list[Out] = []
        while self.waiting and self.waiting[0][0] <= durable:
            out.extend(self.waiting.pop(0)[1])
        if out:
            self.deliver(out)

    def fence_off(self, reason: str) -> None:
        """This server no longer leads: write nothing more, every waiting reply fails."""
        self.fenced = self.fenced or reason
        if self.store is not None and not self.store.failed:
            self.store.detach(reason)
        self._fail_waiting(FencedError(reason))

    def _fail_waiting(self, exc: BaseException) -> None:
        """Nothing not yet durable will be: every waiting "done" becomes an error."""
        waiting, self.waiting = self.waiting, []
        replies = [r for _, rs in waiting for r in rs]
        if replies:
            self.deliver(self.engine.commit_failed(replies, exc))
