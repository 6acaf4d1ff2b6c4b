"""Client library against the fake server: I/O paths, ids, errors, advice, reconnect."""

import asyncio
import os
import time

import pytest

import csnap_client
from csnap_client import protocol as P
from csnap_client.client import ConnectionLostError

from .conftest import CS, ORIGIN_CHUNKS, count, pattern, read_file


async def wait_until(pred, timeout=3.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


async def test_origin_write_read_unaligned(fake, open_volume, devices):
    vol = await open_volume()
    assert vol.size == ORIGIN_CHUNKS * CS and vol.chunk_size == CS
    data = os.urandom(3 * CS + 17)
    await vol.write(CS - 5, data)
    assert await vol.read(CS - 5, len(data)) == data
    assert read_file(devices[0], CS - 5, len(data)) == data
    assert await vol.read(0, 10) == pattern(0)[:10]
    assert count(fake, "QUERY_WRITE") == 1
    # the chunks are now cached as unique: no more queries for them
    await vol.write(CS, b"x" * CS)
    assert count(fake, "QUERY_WRITE") == 1
    assert vol.unique.runs() == [(0, 5)]


async def test_request_ids_start_at_one_and_grow(fake, open_volume):
    vol = await open_volume()
    await vol.write(0, b"a")
    await vol.write(10 * CS, b"b")
    ids = [m["id"] for m in fake.received]
    assert ids[0] == 1 and ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_out_of_order_replies(fake, open_volume):
    vol = await open_volume()
    fake.delay["QUERY_WRITE"] = 0.3
    order = []

    async def write():
        await vol.client.request(P.query_write, [[3, 1]])
        order.append("write")

    async def ping():
        await vol.client.request(P.ping)
        order.append("ping")

    await asyncio.gather(write(), ping())
    assert order == ["ping", "write"]


async def test_many_requests_in_flight(fake, open_volume):
    vol = await open_volume()
    fake.delay["QUERY_WRITE"] = 0.05
    blobs = {c: os.urandom(100) for c in range(ORIGIN_CHUNKS)}
    start = time.monotonic()
    await asyncio.gather(*(vol.write(c * CS + 7, b) for c, b in blobs.items()))
    assert time.monotonic() - start < 1.5  # not serialised (64 x 50 ms would be 3.2 s)
    for c, b in blobs.items():
        assert await vol.read(c * CS + 7, 100) == b


async def test_error_reply_maps_to_exception_and_connection_survives(fake, open_volume):
    vol = await open_volume()
    fake.inject["QUERY_WRITE"] = P.ErrorCode.STORE_FULL
    with pytest.raises(P.StoreFullError) as info:
        await vol.write(0, b"z")
    assert info.value.code == P.ErrorCode.STORE_FULL and info.value.request_id > 0
    await vol.write(0, b"z")  # connection still usable
    assert await vol.read(0, 1) == b"z"


async def test_out_of_volume_is_value_error(open_volume):
    vol = await open_volume()
    with pytest.raises(ValueError):
        await vol.read(vol.size - 1, 2)
    with pytest.raises(ValueError):
        await vol.write(-1, b"x")
    assert await vol.read(vol.size, 0) == b""


async def test_unknown_snapshot(fake, open_volume):
    with pytest.raises(P.UnknownSnapshotError):
        await open_volume("nope")


async def test_snapshot_keeps_old_bytes_and_writes_stay_private(fake, open_volume):
    origin = await open_volume()
    await fake.create_snapshot("snap1")
    new = os.urandom(2 * CS)
    await origin.write(5 * CS + 100, new)
    snap = await open_volume("snap1")
    assert snap.name == "snap1"
    old = pattern(5) + pattern(6) + pattern(7)
    assert await snap.read(5 * CS, 3 * CS) == old
    assert await origin.read(5 * CS + 100, len(new)) == new
    # snapshot write: private to the snapshot, cached as unique
    await snap.write(6 * CS + 1, b"SNAP")
    got = await snap.read(6 * CS, CS)
    assert got == pattern(6)[:1] + b"SNAP" + pattern(6)[5:]
    assert await origin.read(6 * CS + 1, 4) == new[CS - 100 + 1:CS - 100 + 5]
    queries = count(fake, "QUERY_WRITE")
    await snap.write(6 * CS + 10, b"again")
    assert count(fake, "QUERY_WRITE") == queries  # cached store address
    reads = count(fake, "QUERY_SNAPSHOT_READ")
    assert (await snap.read(6 * CS + 10, 5)) == b"again"
    assert count(fake, "QUERY_SNAPSHOT_READ") == reads  # read from the cached address
    # by tag as well
    snap_by_tag = await open_volume(1)
    assert await snap_by_tag.read(6 * CS + 1, 4) == b"SNAP"


async def test_snapshot_read_releases_locks(fake, open_volume):
    await fake.create_snapshot("s")
    snap = await open_volume("s")
    assert await snap.read(0, 4 * CS) == b"".join(pattern(c) for c in range(4))
    assert count(fake, "FINISH_SNAPSHOT_READ") == 1
    assert all(not c.locks for c in fake.conns)


async def test_new_snapshot_advice(fake, open_volume, monkeypatch):
    vol = await open_volume()
    await vol.write(0, b"before")
    assert len(vol.unique) == 1
    synced = []
    real = os.fdatasync

    def slow_sync(fd):
        time.sleep(0.2)
        synced.append(time.monotonic())
        real(fd)

    monkeypatch.setattr("csnap_client.volume.os.fdatasync", slow_sync)
    create = asyncio.ensure_future(fake.create_snapshot("snapA"))
    await wait_until(lambda: vol._advising)
    # a write issued while the advice is handled waits, then needs a fresh query
    await vol.write(0, b"after!")
    await create
    assert synced, "origin must be made durable before the ack"
    ops = [m["op"] for m in fake.received]
    assert ops.index("ACK_ADVICE") < len(ops) - 1 - ops[::-1].index("QUERY_WRITE")
    snap = await open_volume("snapA")
    assert await snap.read(0, 6) == b"before"
    assert await vol.read(0, 6) == b"after!"


async def test_delete_snapshot_advice(fake, open_volume):
    await fake.create_snapshot("gone")
    snap = await open_volume("gone")
    await snap.write(0, b"x")
    await fake.delete_snapshot("gone")
    assert count(fake, "ACK_ADVICE") == 1
    assert len(snap.store_map) == 0
    with pytest.raises(csnap_client.SnapshotDeletedError):
        await snap.read(0, 1)
    with pytest.raises(csnap_client.SnapshotDeletedError):
        await snap.write(0, b"y")


async def test_reconnect_after_restart(fake, open_volume):
    vol = await open_volume()
    await vol.write(0, b"one")
    await fake.restart(downtime=0.2)
    await vol.write(CS, b"two")  # waits for the reconnect
    assert await vol.read(0, 3) == b"one"
    assert vol.client.reconnects == 1
    idents = [m for m in fake.received if m["op"] == "IDENTIFY"]
    assert len(idents) == 2 and idents[0]["client_id"] == idents[1]["client_id"]
    assert vol.client.info.server_epoch == 2
    # the unique cache was dropped on disconnect: chunk 0 needs a new query
    n = count(fake, "QUERY_WRITE")
    await vol.write(0, b"three")
    assert count(fake, "QUERY_WRITE") == n + 1


async def test_a_restart_on_another_store_ends_the_session(fake, open_volume):
    """A second attempt must not accept the other store because the first one noted it."""
    vol = await open_volume()
    await vol.write(0, b"one")
    fake.uuid = "another-store"
    await fake.restart()
    with pytest.raises(csnap_client.StoreChangedError):
        await asyncio.wait_for(vol.write(CS, b"two"), 10)
    assert vol.client.info.store_uuid == "fake-store-uuid"
    assert count(fake, "IDENTIFY") == 2  # no further attempt after the refusal


async def test_inflight_request_resent_after_reconnect(fake, open_volume):
    vol = await open_volume()
    fake.delay["QUERY_WRITE"] = 0.2
    task = asyncio.ensure_future(vol.write(3 * CS, b"resent"))
    await wait_until(lambda: count(fake, "QUERY_WRITE") == 1)
    fake.drop_all()
    fake.delay.clear()
    await task
    writes = [m for m in fake.received if m["op"] == "QUERY_WRITE"]
    assert len(writes) >= 2 and writes[0]["id"] == writes[1]["id"]
    assert await vol.read(3 * CS, 6) == b"resent"


async def test_read_in_flight_across_a_restart_is_read_again(fake, open_volume):
    """Read locks do not survive a lost connection: the read is redone, never trusted."""
    await fake.create_snapshot("s")
    snap = await open_volume("s")
    fake.delay["FINISH_SNAPSHOT_READ"] = 0.3
    task = asyncio.ensure_future(snap.read(2 * CS, 2 * CS))
    await wait_until(lambda: count(fake, "FINISH_SNAPSHOT_READ") == 1)
    await fake.restart()
    fake.delay.clear()
    data = await task
    assert data == pattern(2) + pattern(3)
    ops = [m["op"] for m in fake.received]
    tail = ops[ops.index("IDENTIFY", 1):]
    assert tail[:3] == ["IDENTIFY", "FINISH_SNAPSHOT_READ", "QUERY_SNAPSHOT_READ"], tail
    assert "UPLOAD_LOCK" not in ops
    idents = [m for m in fake.received if m["op"] == "IDENTIFY"]
    assert all(m.get("clean") is True for m in idents)


async def test_broken_lock_means_reread(fake, open_volume, devices):
    await fake.create_snapshot("s")
    snap = await open_volume("s")
    origin = await open_volume()
    fake.delay["FINISH_SNAPSHOT_READ"] = 0.3
    fake.lease_ms = 50  # the lock's lease runs out while the origin write waits
    task = asyncio.ensure_future(snap.read(4 * CS, CS))
    await wait_until(lambda: count(fake, "FINISH_SNAPSHOT_READ") == 1)
    await origin.write(4 * CS, b"N" * CS)  # breaks the lock, copies the old chunk out
    fake.delay.clear()
    assert await task == pattern(4)
    assert count(fake, "QUERY_SNAPSHOT_READ") == 2


async def test_lease_loss_holds_writes(fake, open_volume):
    fake.lease_ms = 300
    vol = await open_volume()
    await vol.write(0, b"a")
    assert len(vol.unique) == 1
    fake.paused.clear()  # the server goes silent
    await wait_until(lambda: not vol.client.lease_fresh(), timeout=2)
    assert len(vol.unique) == 0
    task = asyncio.ensure_future(vol.write(0, b"b"))
    await asyncio.sleep(0.2)
    assert not task.done()  # cached chunk, but no lease: held
    fake.paused.set()
    await asyncio.wait_for(task, 3)
    assert await vol.read(0, 1) == b"b"
    assert count(fake, "PING") >= 1


async def test_ping_and_ack_are_not_resent(fake, open_volume):
    vol = await open_volume()
    fake.delay["PING"] = 0.3
    task = asyncio.ensure_future(vol.client.request(P.ping))
    await wait_until(lambda: count(fake, "PING") == 1)
    fake.drop_all()
    with pytest.raises(ConnectionLostError):
        await task


async def test_close_fails_pending_and_is_idempotent(fake, open_volume):
    vol = await open_volume()
    fake.delay["QUERY_WRITE"] = 5
    task = asyncio.ensure_future(vol.write(0, b"x"))
    await wait_until(lambda: count(fake, "QUERY_WRITE") == 1)
    await vol.close()
    await vol.close()
    with pytest.raises(csnap_client.ClientClosedError):
        await task


async def test_plain_connect_without_context_manager(fake, devices):
    vol = await csnap_client.connect("127.0.0.1", fake.port, origin=devices[0])
    try:
        await vol.write(1, b"q")
        assert await vol.read(1, 1) == b"q"
    finally:
        await vol.close()


async def test_connect_refused(devices):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError):
        await csnap_client.connect("127.0.0.1", port, origin=devices[0])
