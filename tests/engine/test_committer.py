"""The committer (net/commit.py), in process on a real file-backed store: checkpoints in
parts with commits between them, and the group-commit hold.

The store thread's jobs are recorded in order, so the interleaving is asserted exactly
rather than inferred from timings.
"""

from __future__ import annotations

import asyncio
import gc
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from csnapd.engine.service import Engine
from csnapd.net import commit
from csnapd.net.commit import Committer
from csnapd.store import create
from csnapd.store import seal as seal_mod
from csnapd.store.device import FileDevice
from csnapd.store.paths import open_store

CS = 4096


@pytest.fixture
def store(tmp_path):
    origin, path = tmp_path / "origin.img", tmp_path / "store.img"
    with open(origin, "wb") as f:
        f.truncate(4096 * CS)
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    dev = FileDevice(str(path))
    create.create(dev, 4096 * CS, chunk_size=CS)
    dev.close()
    s = open_store(str(path), str(origin))
    s.create_snapshot("s")
    s.commit()
    yield s
    s.close()


@pytest.fixture
def jobs(monkeypatch):
    """The store thread's jobs, in the order they ran: "commit" or "part"."""
    log: list[str] = []
    write, part = seal_mod.Sealed.write, seal_mod.Checkpoint.write_part

    def sealed_write(self):
        log.append("commit")
        return write(self)

    def write_part(self, max_blocks=0):
        log.append("part")
        return part(self, max_blocks)

    monkeypatch.setattr(seal_mod.Sealed, "write", sealed_write)
    monkeypatch.setattr(seal_mod.Checkpoint, "write_part", write_part)
    return log


async def _settle(c: Committer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not c.idle:
        assert time.monotonic() < deadline, "the committer never settled"
        await asyncio.sleep(0.001)


def _committer(store) -> tuple[Committer, ThreadPoolExecutor]:
    engine = Engine(store, epoch=store.sb.generation, now=time.monotonic())
    pool = ThreadPoolExecutor(1)
    return Committer(engine, pool, lambda replies: None), pool


async def test_commits_go_between_the_parts_of_a_long_checkpoint(store, jobs, monkeypatch):
    for c in range(0, 2048, 64):  # many leaves and bitmap bits wait for their home write
        store.origin_write([(c, 3)])
        store.commit()
    monkeypatch.setattr(seal_mod, "PART_BLOCKS", 1)
    jobs.clear()
    c, pool = _committer(store)
    try:
        store.wants_checkpoint = lambda: True
        c.kick()  # the checkpoint starts
        del store.wants_checkpoint
        assert c.checkpoint is not None and jobs == ["part"]
        store.origin_write([(3000, 1)])  # a change arrives while the checkpoint runs
        c.submit([])
        await _settle(c)
        assert jobs[0] == "part" and jobs[1] == "commit", jobs  # not behind the checkpoint
        assert jobs.count("part") > 2 and c.checkpoint is None and c.checkpoints == 1
        assert store.durable_ticket == store.change_ticket
    finally:
        pool.shutdown()


async def test_group_commit_holds_for_the_clients_just_answered(store, jobs):
    c, pool = _committer(store)
    try:
        for k in range(3):  # a commit of three operations
            store.origin_write([(100 + k, 1)])
        c.submit([])
        await _settle(c)
        assert jobs == ["commit"] and c.hold_ops == 3
        store.origin_write([(200, 1)])  # the first of the three clients is back
        c.submit([])
        await asyncio.sleep(0)
        assert c.writing is None and store.has_changes()  # held for the other two
        store.origin_write([(201, 1)])
        store.origin_write([(202, 1)])
        c.submit([])  # all three are in: sealed at once, in one commit
        await _settle(c)
        assert jobs == ["commit", "commit"]
        # a client that does not come back delays the next commit by HOLD at most
        store.origin_write([(300, 1)])
        t0 = time.monotonic()
        c.submit([])
        await _settle(c)
        assert jobs == ["commit"] * 3 and time.monotonic() - t0 < commit.HOLD + 1.0
        # after a one-operation commit nothing is held
        store.origin_write([(400, 1)])
        c.submit([])
        await asyncio.sleep(0)
        assert c.writing is not None
        await _settle(c)
    finally:
        pool.shutdown()


def test_cached_exceptions_are_not_tracked_by_the_garbage_collector(store):
    """Millions of cached exceptions made every full collection stop the loop for
    ~0.4 s while they were objects in lists; as tuples of ints the collector drops
    them from its lists."""
    for c in range(0, 600, 2):
        store.origin_write([(c, 1)])
    store.commit()
    entries = list(store.exmap.entries(0))
    assert len(entries) == 300
    gc.collect()
    gc.collect()  # an entry's tuple is dropped once the pairs inside it were
    assert not any(gc.is_tracked(excs) for _, excs in entries)
