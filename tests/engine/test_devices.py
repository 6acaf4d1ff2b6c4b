"""Device verification and the device watch in the engine, without sockets."""

from __future__ import annotations

import os
import random

import crc32c
import pytest

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnapd.engine import devices as dv
from csnapd.engine.service import Engine
from csnapd.store import create
from csnapd.store import format as fmt
from csnapd.store.device import FileDevice, MemoryDevice
from csnapd.store.paths import open_store
from csnapd.store.store import Store

CS = 4096
CHUNKS = 1024


def make_engine(origin: MemoryDevice | None = None) -> Engine:
    store_dev = MemoryDevice(16 << 20)
    origin = origin or MemoryDevice(CHUNKS * CS)
    create.create(store_dev, origin.size, chunk_size=CS, block_size=512,
                  journal_bytes=256 * 512)
    eng = Engine(Store.open(store_dev, origin), lease=1.0, lock_lease=5.0)
    eng.devices.rng = random.Random(7)
    eng.open_conn(100, control=True)
    return eng


def identify(eng: Engine, conn: int, volume: str = "origin") -> dict:
    eng.open_conn(conn, peer=f"test-{conn}")
    eng.handle_message(conn, m.identify(1, 1000 + conn, volume), 0.0)
    (_, reply), = eng.flush(0.0)
    assert reply["op"] == "IDENTIFY_OK", reply
    m.validate(reply)
    return reply


def snapshot(eng: Engine, name: str) -> None:
    """Create a snapshot, acknowledging the advice on every origin connection."""
    eng.handle_message(100, m.create_snapshot(7, name), 0.0)
    out = eng.flush(0.0)
    for conn, adv in [(c, msg) for c, msg in out if msg["op"] == "ADVICE"]:
        eng.handle_message(conn, m.ack_advice(50, adv["advice"]), 0.0)
    assert (100, "OK") in [(c, msg["op"]) for c, msg in eng.flush(0.0)]


def crcs_of(dev: MemoryDevice, samples: list[list[int]]) -> list[int]:
    return [crc32c.crc32c(dev.pread(off, n)) for off, n in samples]


def answer(eng: Engine, conn: int, crcs: list[int], rid: int = 5) -> dict:
    eng.handle_message(conn, m.verify_devices(rid, crcs), 0.0)
    (_, reply), = eng.flush(0.0)
    m.validate(reply)
    return reply


def test_offer_names_the_store_uuid_and_samples_data_first_and_last():
    origin = MemoryDevice(CHUNKS * CS)
    origin.pwrite(CS, os.urandom(CS * (CHUNKS // 2 - 1)))  # chunks 1..511 hold data
    eng = make_engine(origin)
    for conn in range(2, 8):  # earlier connections fill the pool of known data ranges
        identify(eng, conn)
    devices = identify(eng, 1)["devices"]
    store = eng.store
    assert devices["store_bytes"] == store.dev.size
    assert [off for off, _ in devices["store"]] == [fmt.SUPER_UUID_OFFSET,
                                                    512 + fmt.SUPER_UUID_OFFSET]
    for off, want in devices["store"]:
        assert want == store.sb.uuid and store.dev.pread(off, len(want)) == want
    offsets = [off for off, _ in devices["origin"]]
    assert offsets == sorted(set(offsets)) and len(offsets) == dv.SAMPLES
    assert offsets[0] == 0 and offsets[-1] == (CHUNKS - 1) * CS
    assert all(n == dv.SAMPLE_BYTES for _, n in devices["origin"])
    # the samples between the first and the last are all chunks holding data
    assert all(CS <= off < CHUNKS // 2 * CS for off in offsets[1:-1]), offsets
    assert len(eng.devices._pool) > dv.SAMPLES


def test_all_zero_origin_still_gets_its_samples():
    eng = make_engine()
    offsets = [off for off, _ in identify(eng, 1)["devices"]["origin"]]
    assert len(offsets) == dv.SAMPLES and offsets[0] == 0


def test_right_answer_is_ok_and_answers_once():
    eng = make_engine()
    eng.store.origin.pwrite(0, b"boot sector")
    samples = identify(eng, 1)["devices"]["origin"]
    assert answer(eng, 1, crcs_of(eng.store.origin, samples))["op"] == "VERIFY_OK"
    again = answer(eng, 1, crcs_of(eng.store.origin, samples))
    assert again["code"] == ErrorCode.BAD_REQUEST and "no origin samples" in again["message"]


def test_wrong_answers_get_fresh_samples_then_wrong_device():
    eng = make_engine()
    other = MemoryDevice(CHUNKS * CS)
    other.pwrite(0, b"another filesystem")
    samples = identify(eng, 1)["devices"]["origin"]
    for round_ in range(1, dv.MAX_ROUNDS):
        reply = answer(eng, 1, crcs_of(other, samples))
        assert reply["op"] == "VERIFY_AGAIN" and reply["differ"] == 1, (round_, reply)
        samples = reply["origin"]
    final = answer(eng, 1, crcs_of(other, samples))
    assert final["op"] == "ERROR" and final["code"] == ErrorCode.WRONG_DEVICE
    assert final["message"] == (f"origin: 1 of {len(samples)} sampled chunks differ "
                                "(4 rounds, each with differences)")


def test_a_sample_written_once_between_choice_and_check_still_matches():
    eng = make_engine()
    origin = eng.store.origin
    origin.pwrite(0, b"before")
    samples = identify(eng, 1)["devices"]["origin"]
    read_before = crcs_of(origin, samples)
    origin.pwrite(0, b"after!")  # a live write after the client read: it saw the old data
    assert answer(eng, 1, read_before)["op"] == "VERIFY_OK"
    samples = identify(eng, 2)["devices"]["origin"]
    origin.pwrite(0, b"later!")  # a write before the client read: it sees the new data
    assert answer(eng, 2, crcs_of(origin, samples))["op"] == "VERIFY_OK"


def test_bad_verify_requests_are_errors_and_the_engine_goes_on():
    eng = make_engine()
    eng.open_conn(1)
    eng.handle_message(1, m.verify_devices(4, [1]), 0.0)
    (_, reply), = eng.flush(0.0)
    assert reply["code"] == ErrorCode.NOT_IDENTIFIED
    samples = identify(eng, 2)["devices"]["origin"]
    short = answer(eng, 2, [0] * (len(samples) - 1))
    assert short["code"] == ErrorCode.BAD_REQUEST
    assert f"{len(samples) - 1} checksums for {len(samples)} samples" in short["message"]
    # still outstanding after a malformed answer; a snapshot connection may verify too
    assert answer(eng, 2, crcs_of(eng.store.origin, samples))["op"] == "VERIFY_OK"
    snapshot(eng, "s")
    snap = identify(eng, 3, "s")["devices"]["origin"]
    assert answer(eng, 3, crcs_of(eng.store.origin, snap))["op"] == "VERIFY_OK"


def test_closing_a_connection_forgets_its_samples():
    eng = make_engine()
    identify(eng, 1)
    assert 1 in eng.devices._rounds
    eng.close_conn(1, 0.0)
    assert 1 not in eng.devices._rounds


def test_tiny_origin_has_one_sample():
    eng = make_engine(MemoryDevice(CS))
    samples = identify(eng, 1)["devices"]["origin"]
    assert samples == [[0, CS]]


# ------------------------------------------------------------------ the watch


def test_uuid_overwritten_in_place_stops_the_engine_and_fails_waiting_requests():
    eng = make_engine()
    identify(eng, 1)
    identify(eng, 2)
    snapshot(eng, "s")
    identify(eng, 3, "s")
    eng.handle_message(3, m.query_snapshot_read(8, [[5, 1]]), 0.0)  # read lock on chunk 5
    assert eng.flush(0.0)[0][1]["op"] == "SNAPSHOT_READ_OK"
    eng.handle_message(1, m.query_write(9, [[5, 1]]), 0.0)  # waits for the read lock
    assert eng.flush(0.0) == []
    dev = eng.store.dev
    dev.pwrite(fmt.SUPER_UUID_OFFSET, b"\xee" * 16)
    before = bytes(dev.data)
    eng.tick(0.5)
    assert not eng.stopped  # not due yet
    eng.tick(2.0)
    assert "superblock slot 0 no longer holds" in eng.stopped
    assert eng.shutdown_requested
    out = eng.flush(2.0)
    assert [(c, msg["id"], msg["code"]) for c, msg in out] == [
        (1, 9, ErrorCode.SHUTTING_DOWN)]
    assert "not done: csnapd is stopping" in out[0][1]["message"]
    eng.handle_message(2, m.query_write(10, [[7, 1]]), 2.0)
    (_, refused), = eng.flush(2.0)
    assert refused["code"] == ErrorCode.SHUTTING_DOWN
    assert eng.background() is False
    eng.store.close()
    assert bytes(dev.data) == before  # nothing written after the change was seen


@pytest.fixture
def file_engine(tmp_path):
    store, origin = tmp_path / "store.img", tmp_path / "origin.img"
    for path, size in ((store, 16 << 20), (origin, CHUNKS * CS)):
        with open(path, "wb") as f:
            f.truncate(size)
    dev = FileDevice(str(store))
    create.create(dev, CHUNKS * CS, chunk_size=CS)
    dev.close()
    eng = Engine(open_store(str(store), str(origin)), now=0.0)
    yield eng, store, origin
    eng.store.close()


def test_file_replaced_by_rename_is_noticed(file_engine, tmp_path):
    eng, store, _ = file_engine
    assert eng.watch.check() is None
    other = tmp_path / "other.img"
    other.write_bytes(b"\0" * 4096)
    os.rename(other, store)
    reason = eng.watch.check()
    assert reason.startswith(f"store {store} was replaced: the path now names inode")


def test_origin_removed_or_shrunk_is_noticed_enlarged_is_not(file_engine):
    eng, _, origin = file_engine
    with open(origin, "r+b") as f:
        f.truncate(CHUNKS * CS + 1)
    assert eng.watch.check() is None  # enlarged: csnapctl grow --origin takes it into use
    with open(origin, "r+b") as f:
        f.truncate(CHUNKS * CS - 1)
    assert eng.watch.check() == (f"origin {origin} changed size from {CHUNKS * CS + 1} to "
                                 f"{CHUNKS * CS - 1} bytes, less than the {CHUNKS * CS} bytes "
                                 "the store uses")
    os.unlink(origin)
    assert eng.watch.check() == f"origin {origin} no longer exists (removed or renamed away)"


def test_the_servers_own_commits_do_not_trip_the_watch(file_engine):
    eng, _, _ = file_engine
    eng.open_conn(1)
    eng.handle_message(1, m.identify(1, 1001, "origin"), 0.0)
    eng.flush(0.0)
    eng.handle_message(1, m.query_write(2, [[1, 3]]), 0.0)
    eng.flush(0.0)
    for _ in range(3):
        eng.store._checkpoint()
        assert eng.watch.check() is None
