"""Making the engine's changes durable on the store thread, and releasing the replies after.

Replies that say "done" (or reveal a store address) wait here until every change made
before them is durable. One commit runs on the store thread at a time; whatever the
engine changes and queues while it runs goes into the next one, so clients share fsyncs
without anyone waiting on purpose (group commit).

While a commit runs, the engine must not change the store: the commit encodes and writes
the store's dirty state from the worker thread. ``engine_may_run`` says so; the I/O layer
keeps received requests in their sessions until the commit is done. (A store that can
seal its dirty state, so that the loop goes on changing it during the write, lifts that
restriction; see docs/architecture.md.)

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

log = logging.getLogger("csnapd.net")


class Committer:
    """The one commit in flight and the replies waiting for the next."""

    def __init__(self, engine: Engine, executor: ThreadPoolExecutor,
                 deliver: Callable[[list[Out]], None], resumed: Callable[[], None]) -> None:
        self.engine, self.store = engine, engine.store
        self.executor = executor
        self.deliver = deliver  # sends replies (on the loop)
        self.resumed = resumed  # the engine may run again: feed it what waited
        self.waiting: list[Out] = []  # replies for the next commit
        self.inflight: list[Out] | None = None  # replies of the commit running now
        self.commits = 0
        self.last_commit_s = 0.0

    @property
    def engine_may_run(self) -> bool:
        return self.inflight is None

    @property
    def idle(self) -> bool:
        return self.inflight is None and not self.waiting and not self._dirty()

    def submit(self, replies: list[Out]) -> None:
        """``replies`` may go once everything changed so far is durable."""
        self.waiting.extend(replies)
        self.kick()

    def kick(self) -> None:
        """Start a commit if one is needed and none runs; release replies needing none."""
        if self.inflight is not None:
            return
        if not self._dirty():
            if self.waiting:
                replies, self.waiting = self.waiting, []
                self.deliver(replies)
            return
        self.inflight, self.waiting = self.waiting, []
        started = time.monotonic()
        fut = asyncio.get_running_loop().run_in_executor(self.executor, self.store.commit)
        fut.add_done_callback(lambda f: self._done(f, started))

    def _dirty(self) -> bool:
        store = self.store
        return bool(store.cache.dirty or store.sbs.dirty or store.copier.pending)

    def _done(self, fut: asyncio.Future[Any], started: float) -> None:
        replies, self.inflight = self.inflight or [], None
        self.last_commit_s = time.monotonic() - started
        self.commits += 1
        exc = fut.exception()
        if exc is not None:
            replies = self.engine.commit_failed(replies, exc)
        self.deliver(replies)
        self.resumed()
        self.kick()
