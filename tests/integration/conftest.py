"""Fixtures that run real csnapd processes on temporary sparse files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from csnap_client.protocol import Framer, encode
from csnap_client.protocol import messages as m

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_tool(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {args} failed: {proc.stdout}\n{proc.stderr}")
    return proc


@dataclass
class ServerHandle:
    """A csnapd subprocess and the files it serves."""

    tmp: Path
    store: Path
    origin: Path
    port: int
    control: Path
    chunk_size: int
    proc: subprocess.Popen | None = None
    log: Path = field(default=None)  # type: ignore[assignment]
    extra: tuple[str, ...] = ()

    def start(self, *extra: str, wait: bool = True) -> subprocess.Popen:
        self.extra = extra or self.extra
        self.log = self.tmp / "csnapd.log"
        out = open(self.log, "a")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(BIN / "csnapd"), "--store", str(self.store), "--origin", str(self.origin),
             "--listen", f"127.0.0.1:{self.port}", "--control", str(self.control),
             "--log-level", "debug", *self.extra], stdout=out, stderr=out)
        if wait:
            self.wait_ready()
        return self.proc

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"csnapd exited {self.proc.returncode}: {self.log_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if self.control.exists():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"csnapd did not start: {self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text() if self.log and self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def client(self, volume: str | int = "origin", client_id: int | None = None) -> RawClient:
        c = RawClient(socket.create_connection(("127.0.0.1", self.port), timeout=10))
        reply = c.call(m.identify(0, client_id or int.from_bytes(os.urandom(6), "little"),
                                  volume))
        assert reply["op"] == "IDENTIFY_OK", reply
        c.info = reply
        return c

    def control_client(self) -> RawClient:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(30)
        s.connect(str(self.control))
        return RawClient(s)

    def ctl(self, msg: dict) -> dict:
        c = self.control_client()
        try:
            return c.call(msg)
        finally:
            c.close()


class RawClient:
    """Blocking protocol client for tests: explicit about every message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.framer, self.next_id = sock, Framer(max_frame_size=2 << 20), 1
        self.backlog: list[dict] = []
        self.info: dict = {}

    def send(self, msg: dict) -> int:
        if msg.get("id", 1) == 0 and msg["op"] != "ADVICE":
            msg["id"] = self.next_id
        self.next_id = max(self.next_id, msg.get("id", 0)) + 1
        self.sock.sendall(encode(msg))
        return msg["id"]

    def recv(self, timeout: float | None = 10.0) -> dict:
        if self.backlog:
            return self.backlog.pop(0)
        self.sock.settimeout(timeout)
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("server closed the connection")
            msgs = self.framer.feed_many(data)
            if msgs:
                self.backlog.extend(msgs[1:])
                return msgs[0]

    def wait_for(self, rid: int, timeout: float = 10.0) -> dict:
        """The reply with id ``rid``, answering advices on the way."""
        kept = []
        try:
            while True:
                msg = self.recv(timeout)
                if msg.get("id") == rid and msg["op"] != "ADVICE":
                    return msg
                if msg["op"] == "ADVICE":
                    self.sock.sendall(encode(m.ack_advice(self.next_id, msg["advice"])))
                    self.next_id += 1
                    continue
                kept.append(msg)
        finally:
            self.backlog = kept + self.backlog

    def call(self, msg: dict, timeout: float = 10.0) -> dict:
        return self.wait_for(self.send(msg), timeout)

    def detach(self) -> None:
        """End the session like a well-behaved client: the server forgets its grants."""
        assert self.call(m.detach(0))["op"] == "DETACH_OK"

    def close(self) -> None:
        """Detach (best effort, as the client library does) and close the socket."""
        if self.info:
            try:
                self.call(m.detach(0), timeout=2)
            except (OSError, TimeoutError):
                pass
        self.sock.close()


def read_snapshot_chunk(handle: ServerHandle, client: RawClient, chunk: int) -> bytes:
    """Read one chunk of a snapshot as a client does: map it, read, release the lock."""
    reply = client.call(m.query_snapshot_read(0, [[chunk, 1]]))
    cs = handle.chunk_size
    path, where = ((handle.store, reply["store"][0][2]) if reply["store"]
                   else (handle.origin, chunk))
    with open(path, "rb") as f:
        f.seek(where * cs)
        data = f.read(cs)
    if reply["origin"]:
        client.call(m.finish_snapshot_read(0, reply["id"]))
    return data


def snapshot_chunk(handle: ServerHandle, name: str, chunk: int) -> bytes:
    """One chunk of snapshot ``name``, read on a connection of its own."""
    snap = handle.client(name)
    try:
        return read_snapshot_chunk(handle, snap, chunk)
    finally:
        snap.close()


#: Every server made by make_server; tests/conftest.py kills those a test left running.
STARTED: list[ServerHandle] = []


def make_server(tmp: Path, chunk_size: int = 4096, origin_size: int = 4 << 20,
                store_size: int = 64 << 20, **init: str) -> ServerHandle:
    store, origin = tmp / "store.img", tmp / "origin.img"
    with open(origin, "wb") as f:
        f.truncate(origin_size)
    with open(store, "wb") as f:
        f.truncate(store_size)
    args = ["--store", str(store), "--origin", str(origin), "--chunk-size", str(chunk_size),
            "--quiet"]
    for key, value in init.items():
        args += [f"--{key.replace('_', '-')}", value]
    run_tool("csnap-init", *args)
    handle = ServerHandle(tmp, store, origin, free_port(), tmp / "ctl" / "csnapd.sock",
                          chunk_size)
    STARTED.append(handle)
    return handle


@pytest.fixture
def server(tmp_path: Path):
    """A running csnapd on a 4 MiB origin with 4 KiB chunks; checked clean afterwards."""
    handle = make_server(tmp_path)
    handle.start()
    yield handle
    code = handle.stop()
    assert code == 0, handle.log_text()
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin", str(handle.origin),
                     check=False)
    assert check.returncode == 0, check.stdout + check.stderr
