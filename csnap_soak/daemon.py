"""A csnapd subprocess on files in a folder, for the soaks: start, SIGKILL, stop, control."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """One csnapd on ``tmp/origin.img`` and ``tmp/store.img`` (made by ``init``)."""

    def __init__(self, tmp: Path, extra: tuple[str, ...] = ()) -> None:
        self.tmp, self.extra = tmp, extra
        self.origin, self.store = tmp / "origin.img", tmp / "store.img"
        self.control = tmp / "csnapd.sock"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = tmp / "csnapd.log"

    def init(self, origin: bytes | int, store_bytes: int, chunk_size: int) -> None:
        """Write the origin (its bytes, or a sparse size) and make a fresh store."""
        with open(self.origin, "wb") as f:
            if isinstance(origin, int):
                f.truncate(origin)
            else:
                f.write(origin)
        with open(self.store, "wb") as f:
            f.truncate(store_bytes)
        subprocess.run([str(BIN / "csnap-init"), "--store", str(self.store), "--origin",
                        str(self.origin), "--chunk-size", str(chunk_size), "--quiet"],
                       check=True)

    def start(self) -> float:
        """Start csnapd and wait until both sockets answer; return how long that took."""
        t0 = time.monotonic()
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "csnapd"), "--store", str(self.store), "--origin", str(self.origin),
                 "--listen", f"127.0.0.1:{self.port}", "--control", str(self.control),
                 *self.extra], stdout=out, stderr=out)
        deadline = t0 + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"csnapd exited {self.proc.returncode}:\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                with socket.socket(socket.AF_UNIX) as u:
                    u.connect(str(self.control))
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"csnapd did not start:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL csnapd (a crash) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int:
        """SIGTERM (clean shutdown); return the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def tail(self, n: int = 30) -> str:
        """The last ``n`` lines of csnapd's log."""
        return "\n".join(self.log.read_text().splitlines()[-n:]) if self.log.exists() else ""

    def ctl(self, op: str, *args: Any) -> Any:
        """One control request on a fresh blocking connection; raises on ERROR."""
        from csnap_client.protocol import messages as m
        build = {"create": m.create_snapshot, "delete": m.delete_snapshot,
                 "list": m.list_snapshots, "status": m.status}[op]
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(60)
            s.connect(str(self.control))
            reply = exchange(s, build(1, *args))
        if reply["op"] == "ERROR":
            raise RuntimeError(f"{op} {args}: {reply['message']}")
        return reply["result"]


def exchange(sock: socket.socket, msg: dict[str, Any]) -> dict[str, Any]:
    """Send one request on a blocking socket and return its reply (ADVICE is skipped)."""
    from csnap_client.protocol import Framer, encode
    sock.sendall(encode(msg))
    framer = Framer(max_frame_size=2 << 20)
    while True:
        data = sock.recv(1 << 16)
        if not data:
            raise ConnectionError("connection closed by csnapd")
        for reply in framer.feed_many(data):
            if reply.get("id") == msg["id"]:
                return reply
