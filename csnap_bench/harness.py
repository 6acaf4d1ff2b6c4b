"""The benchmark harness: a csnapd subprocess on temporary files, a fast raw-protocol
client, closed-loop load generation and latency statistics."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csnap_client.control import ControlClient
from csnap_client.protocol import MAX_SERVER_FRAME, Framer, encode
from csnap_client.protocol import messages as m

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid`` (all threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_io(pid: int) -> dict[str, int]:
    """The I/O counters of process ``pid`` (/proc/PID/io: ``write_bytes`` is what the
    process sent towards the block layer, ``wchar`` every byte it passed to a write call,
    sockets included), or an empty dict where the kernel does not offer them."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return {k: int(v) for k, v in (line.split(":") for line in f if ":" in line)}
    except OSError:
        return {}


def allocated_bytes(path: Path) -> int:
    """Bytes the file system has allocated to ``path`` (``st_blocks`` x 512)."""
    return os.stat(path).st_blocks * 512


def log(text: str) -> None:
    """Progress on stderr (the report goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


def proc_rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def self_cpu_seconds() -> float:
    """CPU seconds used by this (benchmark client) process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_files(directory: Path, origin_bytes: int, store_bytes: int, chunk_size: int,
               *init_args: str) -> tuple[Path, Path]:
    """Sparse origin and store files, the store initialised by csnap-init."""
    directory.mkdir(parents=True, exist_ok=True)
    origin, store = directory / "origin.img", directory / "store.img"
    for path, size in ((origin, origin_bytes), (store, store_bytes)):
        with open(path, "wb") as f:
            f.truncate(size)
    subprocess.run([str(BIN / "csnap-init"), "--store", str(store), "--origin", str(origin),
                    "--chunk-size", str(chunk_size), "--quiet", "--force", *init_args],
                   check=True, capture_output=True, text=True)
    return origin, store


@dataclass
class ServerProc:
    """A csnapd subprocess serving sparse temporary files."""

    directory: Path
    chunk_size: int
    origin_bytes: int
    store_bytes: int
    init_args: tuple[str, ...] = ()
    server_args: tuple[str, ...] = ()
    store: Path | None = None
    origin: Path | None = None
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def control(self) -> Path:
        """The control socket path."""
        return self.directory / "ctl.sock"

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def create_files(self) -> None:
        """Make and initialise the sparse origin and store."""
        self.origin, self.store = make_files(self.directory, self.origin_bytes,
                                             self.store_bytes, self.chunk_size, *self.init_args)

    def start(self, timeout: float = 60.0) -> None:
        """Start csnapd (creating the files first if needed) and wait until it serves."""
        if self.store is None:
            self.create_files()
        self.port = free_port()
        log = open(self.directory / "csnapd.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [str(BIN / "csnapd"), "--store", str(self.store), "--origin", str(self.origin),
             "--listen", f"127.0.0.1:{self.port}", "--control", str(self.control),
             "--log-level", "warning", *self.server_args], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"csnapd exited {self.proc.returncode}: {self.log_text()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if self.control.exists():
                    return
            time.sleep(0.05)
        raise RuntimeError(f"csnapd did not start: {self.log_text()}")

    def log_text(self) -> str:
        """The server's log so far."""
        path = self.directory / "csnapd.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM and wait (a clean shutdown commits and checkpoints)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    async def ctl(self) -> ControlClient:
        """An open control-socket client."""
        return await ControlClient(self.control, timeout=600).open()

    async def connect(self, volume: str | int = "origin", client_id: int | None = None
                      ) -> RawConn:
        """An identified raw protocol connection for ``volume``."""
        return await RawConn.open("127.0.0.1", self.port, volume, client_id)


class _Proto(asyncio.Protocol):
    def __init__(self, conn: RawConn) -> None:
        self.conn = conn
        self.framer = Framer(max_frame_size=MAX_SERVER_FRAME)

    def data_received(self, data: bytes) -> None:
        on = self.conn.on_message
        for msg in self.framer.feed_many(data):
            on(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.lost(exc)


_client_ids = itertools.count(int.from_bytes(os.urandom(4), "little") << 16)


class RawConn:
    """A minimal pipelined protocol client: no validation, no reconnects, ADVICE acked at
    once. Built for load generation; ``call`` sends one request and awaits its reply."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 1
        self.info: dict[str, Any] = {}
        self.closed: BaseException | None = None

    @classmethod
    async def open(cls, host: str, port: int, volume: str | int = "origin",
                   client_id: int | None = None) -> RawConn:
        """Connect and IDENTIFY."""
        self = cls()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_connection(lambda: _Proto(self), host, port)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport  # type: ignore[assignment]
        reply = await self.call(m.identify(0, client_id or next(_client_ids), volume))
        if reply["op"] != "IDENTIFY_OK":
            raise RuntimeError(f"IDENTIFY refused: {reply}")
        self.info = reply
        return self

    def on_message(self, msg: dict[str, Any]) -> None:
        """Route a reply to its waiter; acknowledge advices."""
        rid = msg.get("id", 0)
        if rid == 0:
            if msg.get("op") == "ADVICE":
                self.send(m.ack_advice(0, msg["advice"]))
            return
        fut = self.pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def lost(self, exc: BaseException | None) -> None:
        """Fail every waiter."""
        self.closed = exc or ConnectionError("connection closed")
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"connection lost: {exc}"))
        self.pending.clear()

    def send(self, msg: dict[str, Any]) -> int:
        """Send ``msg`` with a fresh id (ignoring any id it carries); returns the id."""
        rid = self.next_id
        self.next_id += 1
        msg["id"] = rid
        assert self.transport is not None
        self.transport.write(encode(msg))
        return rid

    def call(self, msg: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send and return a future for the reply."""
        if self.closed is not None:
            raise ConnectionError(f"connection closed: {self.closed}")
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.send(msg)] = fut
        return fut

    async def checked(self, msg: dict[str, Any], want: str) -> dict[str, Any]:
        """Call and insist on reply op ``want``."""
        reply = await self.call(msg)
        if reply["op"] != want:
            raise RuntimeError(f"{msg['op']} got {reply}")
        return reply

    def close(self) -> None:
        """Close the socket."""
        if self.transport is not None:
            self.transport.close()


# --------------------------------------------------------------------- statistics

def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of an already sorted list (nearest rank)."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


@dataclass
class Result:
    """One measured workload point."""

    name: str
    clients: int
    chunks_per_msg: int
    ops: int = 0
    chunks: int = 0
    seconds: float = 0.0
    bytes_moved: int = 0
    latencies: list[float] = field(default_factory=list, repr=False)
    server_cpu: float = 0.0  # fraction of one core used by csnapd during the run
    server_write_bytes: int = 0  # csnapd's /proc/PID/io write_bytes during the run
    client_cpu: float = 0.0  # fraction of one core used by the benchmark process
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures."""
        lat = sorted(self.latencies)
        secs = self.seconds or 1e-9
        return {
            "name": self.name, "clients": self.clients, "chunks_per_msg": self.chunks_per_msg,
            "ops": self.ops, "chunks": self.chunks, "seconds": round(self.seconds, 4),
            "ops_per_s": round(self.ops / secs, 1), "chunks_per_s": round(self.chunks / secs, 1),
            "mb_per_s": round(self.bytes_moved / secs / 1e6, 2) if self.bytes_moved else None,
            "p50_ms": round(percentile(lat, 50) * 1e3, 3),
            "p99_ms": round(percentile(lat, 99) * 1e3, 3),
            "max_ms": round((lat[-1] if lat else 0.0) * 1e3, 3),
            "server_cpu": round(self.server_cpu, 2), "client_cpu": round(self.client_cpu, 2),
            "server_us_per_op": round(self.server_cpu * secs / max(1, self.ops) * 1e6, 1),
            "server_write_bytes_per_chunk": (round(self.server_write_bytes / self.chunks)
                                             if self.chunks else None),
            "notes": self.notes, **self.extra,
        }


OpFn = Callable[[int, int], Awaitable[int]]
"""``op(worker, seq) -> chunks done``: one operation of one closed-loop worker."""


async def run_closed_loop(name: str, workers: int, op: OpFn, seconds: float,
                          chunks_per_msg: int, server_pid: int | None,
                          max_ops: int | None = None, chunk_bytes: int = 0) -> Result:
    """Run ``workers`` closed-loop workers for ``seconds`` (or until ``max_ops`` in total)
    and collect throughput, latency and CPU use."""
    res = Result(name, workers, chunks_per_msg)
    deadline = time.perf_counter() + seconds
    budget = [max_ops if max_ops is not None else 1 << 62]
    lats = res.latencies
    perf = time.perf_counter

    async def worker(w: int) -> None:
        seq = 0
        while perf() < deadline and budget[0] > 0:
            budget[0] -= 1
            t = perf()
            n = await op(w, seq)
            lats.append(perf() - t)
            res.ops += 1
            res.chunks += n
            seq += 1

    s0 = proc_cpu_seconds(server_pid) if server_pid else 0.0
    io0 = proc_io(server_pid).get("write_bytes", 0) if server_pid else 0
    c0 = self_cpu_seconds()
    t0 = perf()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    res.seconds = perf() - t0
    if server_pid:
        res.server_cpu = (proc_cpu_seconds(server_pid) - s0) / res.seconds
        res.server_write_bytes = proc_io(server_pid).get("write_bytes", 0) - io0
    res.client_cpu = (self_cpu_seconds() - c0) / res.seconds
    res.bytes_moved = res.chunks * chunk_bytes
    return res
