"""Clients refuse devices that are not the server's (real csnapd, real files).

Two independent csnap setups of the same sizes: ``a`` is served, ``b`` is another
setup's store and origin, as a mislabelled LUN would be. Pointing a client at ``b``'s
files must be refused, naming the device, before a byte is read or written.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
from pathlib import Path

import pytest

import csnap_client
import csnap_client.devices as client_devices
from csnap_client.protocol import ErrorCode, RemoteError, WrongDeviceError
from csnap_client.protocol import messages as m

from .conftest import BIN, RawClient, ServerHandle, make_server, run_tool

CS = 4096
SIZE = 4 << 20


def fill(path: Path, chunks: list[int], seed: bytes) -> None:
    """Write recognisable, non-zero data into some chunks of a (sparse) origin file."""
    with open(path, "r+b") as f:
        for c in chunks:
            f.seek(c * CS)
            f.write(hashlib.sha256(seed + bytes([c % 256])).digest() * (CS // 32))


def fingerprint(*paths: Path) -> list[tuple[str, int, int]]:
    """Contents, mtime and size of each file: equal before and after means untouched."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size))
    return out


@pytest.fixture
def setups(tmp_path):
    """(a, b): ``a`` running with some data in its origin; ``b`` another, idle setup."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = make_server(tmp_path / "a", origin_size=SIZE)
    b = make_server(tmp_path / "b", origin_size=SIZE)
    fill(a.origin, [3, 200, 640, 1000], b"a")
    fill(b.origin, [3, 201, 700, 1000], b"b")
    a.start()
    yield a, b
    assert a.stop() == 0, a.log_text()


def csnap_io(a: ServerHandle, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "csnap-io"), "--server", f"127.0.0.1:{a.port}", *args],
                          input=stdin, capture_output=True, timeout=60)


def snapshot(a: ServerHandle, name: str) -> None:
    run_tool("csnapctl", "--control", str(a.control), "create", name)


def all_files(a: ServerHandle, b: ServerHandle) -> list[Path]:
    """The files a refused client could have written: the right origin and the other
    setup's two (the served store is left out: csnapd itself writes its metadata)."""
    return [a.origin, b.store, b.origin]


# ------------------------------------------------------------------ csnap-io


def test_csnap_io_refuses_another_setups_store(setups):
    a, b = setups
    snapshot(a, "s")
    before = fingerprint(*all_files(a, b))
    w = csnap_io(a, "--volume", "s", "--origin", str(a.origin), "--store", str(b.store),
                 "write", "--offset", "0", stdin=b"x" * 10000)
    r = csnap_io(a, "--volume", "s", "--origin", str(a.origin), "--store", str(b.store),
                 "read", "--length", "8K")
    for proc in (w, r):
        assert proc.returncode == 4, proc.stderr
        err = proc.stderr.decode()
        assert f"csnap-io: store {b.store} is not the server's store: the store UUID " in err
        assert "is in neither superblock slot (is this the right device?)" in err
    assert r.stdout == b""
    assert fingerprint(*all_files(a, b)) == before


def test_csnap_io_refuses_a_same_size_wrong_origin(setups):
    a, b = setups
    snapshot(a, "s")
    before = fingerprint(*all_files(a, b))
    origin_only = csnap_io(a, "--volume", "origin", "--origin", str(b.origin), "write",
                           stdin=b"y" * 5000)
    snap = csnap_io(a, "--volume", "s", "--origin", str(b.origin), "--store", str(a.store),
                    "read", "--length", "4K")
    for proc in (origin_only, snap):
        assert proc.returncode == 4, proc.stderr
        err = proc.stderr.decode()
        assert f"csnap-io: origin {b.origin} does not match the server's origin: " in err
        assert ("sampled chunks differ (4 rounds, each with differences) "
                "(is this the right device?)") in err
    assert fingerprint(*all_files(a, b)) == before
    assert "refused its origin device" in a.log_text()


def test_csnap_io_refuses_an_origin_of_another_size(setups, tmp_path):
    a, b = setups
    small = tmp_path / "small.img"
    with open(small, "wb") as f:
        f.truncate(SIZE // 2)
    before = fingerprint(small, *all_files(a, b))
    proc = csnap_io(a, "--volume", "origin", "--origin", str(small), "write", stdin=b"z")
    assert proc.returncode == 4
    assert (f"csnap-io: origin {small} is {SIZE // 2} bytes but the server's origin is {SIZE} "
            "bytes (is this the right device?)") in proc.stderr.decode()
    assert fingerprint(small, *all_files(a, b)) == before


def test_csnap_io_with_the_right_devices_works_as_before(setups):
    a, b = setups
    data = os.urandom(3 * CS + 17)
    w = csnap_io(a, "--volume", "origin", "--origin", str(a.origin), "write", "--offset", "8K",
                 stdin=data)
    assert w.returncode == 0, w.stderr
    snapshot(a, "s")
    r = csnap_io(a, "--volume", "s", "--origin", str(a.origin), "--store", str(a.store),
                 "read", "--offset", "8K", "--length", str(len(data)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    assert b"WARNING" not in w.stderr + r.stderr


# ------------------------------------------------------------------ the library


async def test_library_refuses_wrong_devices_and_names_them(setups):
    a, b = setups
    snapshot(a, "s")
    before = fingerprint(*all_files(a, b))
    cases = [("origin", b.origin, None, f"origin {b.origin} does not match"),
             ("s", a.origin, b.store, f"store {b.store} is not the server's store"),
             ("s", b.origin, a.store, f"origin {b.origin} does not match")]
    for volume, origin, store, text in cases:
        with pytest.raises(WrongDeviceError) as ei:
            await csnap_client.connect("127.0.0.1", a.port, volume, origin=str(origin),
                                       store=str(store) if store else None)
        assert isinstance(ei.value, RemoteError) and ei.value.code == ErrorCode.WRONG_DEVICE
        assert ei.value.message.startswith(text), ei.value.message
        assert ei.value.message.endswith("(is this the right device?)")
    assert fingerprint(*all_files(a, b)) == before
    async with await csnap_client.connect("127.0.0.1", a.port, "s", origin=str(a.origin),
                                          store=str(a.store)) as vol:
        assert await vol.read(3 * CS, 32) == a.origin.read_bytes()[3 * CS:3 * CS + 32]


async def test_reconnect_to_a_server_with_another_origin_is_refused(setups):
    a, b = setups
    vol = await csnap_client.connect("127.0.0.1", a.port, "origin", origin=str(a.origin),
                                     reconnect_delay=0.02, reconnect_timeout=20)
    try:
        await vol.write(0, b"before restart")
        assert a.stop() == 0
        client_origin, a.origin = a.origin, b.origin  # restarted, by mistake, on b's origin
        a.start()
        before = fingerprint(client_origin, b.origin)
        with pytest.raises(WrongDeviceError) as ei:
            for _ in range(200):
                await vol.write(5 * CS, b"after restart")
                await asyncio.sleep(0.05)
        assert f"origin {client_origin} does not match the server's origin" in ei.value.message
        assert fingerprint(client_origin, b.origin) == before
    finally:
        await vol.close()


async def test_a_sample_changing_during_the_check_is_not_a_refusal(setups, monkeypatch):
    """One write between the server's choice and its check: matches at once. Two writes
    (the client saw neither the chosen nor the checked data): a retry with fresh samples,
    still no refusal."""
    a, _ = setups
    real = client_devices.read_range
    versions: list[bytes] = []

    def racing_read(fd, offset, length):
        if offset != 0 or not versions:
            return real(fd, offset, length)
        with open(a.origin, "r+b") as f:  # a live writer on another machine, say
            f.write(versions.pop(0))
            f.flush()
            data = real(fd, offset, length)
            if versions:
                f.seek(0)
                f.write(versions.pop(0))
        return data

    monkeypatch.setattr(client_devices, "read_range", racing_read)
    for writes in ([b"one write " * 8], [b"first of two " * 8, b"second of two " * 8]):
        versions[:] = writes
        async with await csnap_client.connect("127.0.0.1", a.port, "origin",
                                              origin=str(a.origin)) as vol:
            assert not versions
            assert await vol.read(0, len(writes[-1])) == writes[-1]
    log = a.log_text()
    assert log.count("origin samples differ (round 1); sending fresh ones") == 1, log
    assert "refused its origin device" not in log


# ------------------------------------------------------------------ csnap-nbd


@pytest.mark.parametrize("which", ["store", "origin"])
def test_csnap_nbd_refuses_wrong_devices_at_start(setups, which):
    a, b = setups
    origin, store = (a.origin, b.store) if which == "store" else (b.origin, a.store)
    proc = subprocess.run(
        [str(BIN / "csnap-nbd"), "--server", f"127.0.0.1:{a.port}", "--origin", str(origin),
         "--store", str(store), "--unix", str(a.tmp / "nbd.sock")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4, proc.stderr
    wrong = b.store if which == "store" else b.origin
    assert f"csnap-nbd: {which} {wrong} " in proc.stderr
    assert "(is this the right device?)" in proc.stderr


# ------------------------------------------------------------------ hostile input


def test_hostile_verify_devices_gets_clear_errors_and_the_server_goes_on(setups):
    a, _ = setups
    c = a.client()
    samples = c.info["devices"]["origin"]
    n = len(samples)
    assert 6 <= n <= 8 and samples[0] == [0, CS] and samples[-1] == [SIZE - CS, CS]
    # SEEK_DATA steers probes onto the sparse origin's data: 200, 640 and 1000 follow
    # long holes (chunk 3 follows a short one, so it is rarely picked)
    assert len({200, 640, 1000} & {off // CS for off, _ in samples}) >= 2, samples
    cases = [
        ({"op": "VERIFY_DEVICES", "id": 10, "origin": [1] * (n - 1)},
         ErrorCode.BAD_REQUEST, f"{n - 1} checksums for {n} samples"),
        ({"op": "VERIFY_DEVICES", "id": 11, "origin": [1] * (n + 1)},
         ErrorCode.BAD_REQUEST, f"{n + 1} checksums for {n} samples"),
        ({"op": "VERIFY_DEVICES", "id": 12, "origin": "crc"}, ErrorCode.BAD_REQUEST, "origin"),
        ({"op": "VERIFY_DEVICES", "id": 13, "origin": [1.5] * n}, ErrorCode.BAD_REQUEST,
         "uint32"),
        ({"op": "VERIFY_DEVICES", "id": 14, "origin": [2**32] * n}, ErrorCode.BAD_REQUEST,
         "uint32"),
        ({"op": "VERIFY_DEVICES", "id": 15, "origin": [None] * n}, ErrorCode.BAD_REQUEST,
         "uint32"),
        ({"op": "VERIFY_DEVICES", "id": 16}, ErrorCode.BAD_REQUEST, "missing"),
        ({"op": "VERIFY_DEVICES", "id": 17, "origin": [0] * n, "store": True},
         ErrorCode.BAD_REQUEST, "unknown fields"),
    ]
    for msg, code, text in cases:
        reply = c.call(msg)
        assert reply["op"] == "ERROR" and reply["code"] == code, (msg, reply)
        assert text in reply["message"], (msg, reply)
    with open(a.origin, "rb") as f:
        crcs = []
        for off, length in samples:
            f.seek(off)
            crcs.append(client_devices.crc32c.crc32c(f.read(length)))
    assert c.call(m.verify_devices(20, crcs))["op"] == "VERIFY_OK"
    again = c.call(m.verify_devices(21, crcs))
    assert again["code"] == ErrorCode.BAD_REQUEST and "no origin samples" in again["message"]
    assert c.call(m.ping(22))["op"] == "PONG"
    c.close()
    fresh = a.client()
    assert fresh.call(m.ping(2))["op"] == "PONG"
    fresh.close()
    ctl = a.ctl(m.verify_devices(3, crcs))
    assert ctl["code"] == ErrorCode.UNKNOWN_OP
    unidentified = RawClient(socket.create_connection(("127.0.0.1", a.port), timeout=10))
    assert unidentified.call(m.verify_devices(4, crcs))["code"] == ErrorCode.NOT_IDENTIFIED
    unidentified.close()
