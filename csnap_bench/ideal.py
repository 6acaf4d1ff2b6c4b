"""The ideal server: the Python floor for csnapd's per-query cost.

It speaks csnapd's wire protocol (4-byte big-endian length + one msgpack map per frame) on
uvloop and answers every request at once with a valid reply of the right op, but keeps no
metadata, validates nothing, writes nothing to disk and never syncs. Every batch of frames
that one read brings is answered with one joined socket write. Whatever csnapd spends per
query beyond this process is the price of its metadata work and its design; the benchmark
drives both with the same client in the same run and reports the ratio.

Snapshot reads need to say where a chunk lives without a map: chunks below
``--store-below`` are answered as exceptions (store chunk = chunk number), the others as
shared with the origin (a read lock that FINISH_SNAPSHOT_READ releases). The benchmark lays
out its csnapd workloads the same way.

Run as ``python -m csnap_bench.ideal --chunk-size 4096 --origin-chunks N``; it prints the
port it listens on as its first line of output and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
LEASE_MS = 30_000
UNKNOWN_OP = 101

Reply = dict[str, Any]


class IdealConnection(asyncio.Protocol):
    """One data connection: frames in, one reply per frame, one write per read."""

    __slots__ = ("layout", "transport", "buf", "snapshot", "handlers")

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.snapshot: dict[str, Any] | None = None
        self.handlers: dict[str, Callable[[dict[str, Any]], Reply]] = {
            "IDENTIFY": self.identify, "QUERY_WRITE": self.query_write,
            "QUERY_SNAPSHOT_READ": self.query_snapshot_read,
            "FINISH_SNAPSHOT_READ": finish_ok, "PING": pong, "ACK_ADVICE": ack_ok,
            "DETACH": detach_ok, "VERIFY_DEVICES": verify_ok, "QUERY_MAP": map_ok,
            "LIST_VOLUMES": volumes,
        }

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end, off, out = len(buf), 0, []
        unpack, pack, handlers = msgpack.unpackb, msgpack.packb, self.handlers
        view = memoryview(buf)
        while end - off >= 4:
            (length,) = HEADER.unpack_from(buf, off)
            stop = off + 4 + length
            if stop > end:
                break
            msg = unpack(view[off + 4:stop], raw=False)
            handler = handlers.get(msg.get("op"))
            reply = handler(msg) if handler is not None else unknown(msg)
            payload = pack(reply, use_bin_type=True)
            out.append(HEADER.pack(len(payload)))
            out.append(payload)
            off = stop
        view.release()
        self.buf = buf[off:] if off < end else b""
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def identify(self, msg: dict[str, Any]) -> Reply:
        """IDENTIFY_OK for the origin or any snapshot name or tag (all exist)."""
        volume = msg.get("volume", "origin")
        if volume != "origin":
            name = volume if isinstance(volume, str) else f"tag{volume}"
            tag = volume if isinstance(volume, int) else 1
            self.snapshot = {"name": name, "tag": tag, "created": self.layout.started}
        lay = self.layout
        return {"op": "IDENTIFY_OK", "id": msg["id"], "version": msg.get("version", 2),
                "chunk_size": lay.chunk_size, "origin_chunks": lay.origin_chunks,
                "origin_bytes": lay.origin_chunks * lay.chunk_size,
                "store_uuid": "00000000-0000-0000-0000-000000000000", "server_epoch": 1,
                "lease_ms": LEASE_MS, "snapshot": self.snapshot, "read_only": False}

    def query_write(self, msg: dict[str, Any]) -> Reply:
        """WRITE_OK on the origin; on a snapshot, a mapping to store chunks."""
        if self.snapshot is None:
            return {"op": "WRITE_OK", "id": msg["id"]}
        return {"op": "SNAPSHOT_WRITE_OK", "id": msg["id"],
                "map": [[s, n, s] for s, n in msg["ranges"]]}

    def query_snapshot_read(self, msg: dict[str, Any]) -> Reply:
        """Ranges below the layout's boundary read from the store, the others from the
        origin (a read lock named by the request id)."""
        below = self.layout.store_below
        origin, store = [], []
        for s, n in msg["ranges"]:
            if s < below:
                store.append([s, n, s])
            else:
                origin.append([s, n])
        return {"op": "SNAPSHOT_READ_OK", "id": msg["id"], "origin": origin, "store": store,
                "lease_ms": LEASE_MS}


def finish_ok(msg: dict[str, Any]) -> Reply:
    """FINISH_OK: every lock is still valid (nothing ever breaks one)."""
    return {"op": "FINISH_OK", "id": msg["id"], "valid": True}


def pong(msg: dict[str, Any]) -> Reply:
    """PONG."""
    return {"op": "PONG", "id": msg["id"]}


def ack_ok(msg: dict[str, Any]) -> Reply:
    """ACK_OK (the ideal server never sends advices, but answers acknowledgements)."""
    return {"op": "ACK_OK", "id": msg["id"]}


def detach_ok(msg: dict[str, Any]) -> Reply:
    """DETACH_OK."""
    return {"op": "DETACH_OK", "id": msg["id"]}


def verify_ok(msg: dict[str, Any]) -> Reply:
    """VERIFY_OK: every device matches."""
    return {"op": "VERIFY_OK", "id": msg["id"]}


def map_ok(msg: dict[str, Any]) -> Reply:
    """MAP_OK: no exceptions anywhere."""
    return {"op": "MAP_OK", "id": msg["id"], "store": []}


def volumes(msg: dict[str, Any]) -> Reply:
    """VOLUMES: no snapshots to list."""
    return {"op": "VOLUMES", "id": msg["id"], "snapshots": []}


def unknown(msg: dict[str, Any]) -> Reply:
    """ERROR UNKNOWN_OP for anything else."""
    rid = msg.get("id", 0)
    return {"op": "ERROR", "id": rid if isinstance(rid, int) else 0, "code": UNKNOWN_OP,
            "message": f"the ideal server does not answer {msg.get('op')!r}"}


class Layout:
    """What the ideal server pretends to serve."""

    def __init__(self, chunk_size: int, origin_chunks: int, store_below: int) -> None:
        self.chunk_size, self.origin_chunks = chunk_size, origin_chunks
        self.store_below = store_below
        self.started = time.time()


async def serve(layout: Layout, host: str, port: int) -> None:
    """Listen, print the port, serve until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: IdealConnection(layout), host, port,
                                      reuse_address=True)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m csnap_bench.ideal``."""
    p = argparse.ArgumentParser(prog="python -m csnap_bench.ideal",
                                description="csnapd's protocol with no metadata behind it")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--origin-chunks", type=int, default=1 << 22)
    p.add_argument("--store-below", type=int, default=None, metavar="CHUNK",
                   help="snapshot reads of chunks below this read from the store "
                        "(default: half the origin)")
    args = p.parse_args(argv)
    below = args.origin_chunks // 2 if args.store_below is None else args.store_below
    layout = Layout(args.chunk_size, args.origin_chunks, below)
    import uvloop
    uvloop.run(serve(layout, args.host, args.port))
    return 0


class IdealProc:
    """The ideal server as a subprocess of the benchmark, so its CPU time is its own."""

    def __init__(self, directory: Path, chunk_size: int, origin_chunks: int,
                 store_below: int) -> None:
        self.directory = directory
        self.args = ["--chunk-size", str(chunk_size), "--origin-chunks", str(origin_chunks),
                     "--store-below", str(store_below)]
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        """Start it and read the port it listens on."""
        self.directory.mkdir(parents=True, exist_ok=True)
        err = open(self.directory / "ideal.log", "w")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen([sys.executable, "-m", "csnap_bench.ideal", *self.args],
                                     stdout=subprocess.PIPE, stderr=err, text=True)
        err.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # the first line: the port
        if not line.isdigit():
            self.stop()
            raise RuntimeError("ideal server did not start: "
                               + (self.directory / "ideal.log").read_text()[-2000:])
        self.port = int(line)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def connect(self, volume: str | int = "origin") -> Any:
        """An identified raw protocol connection, as for csnapd."""
        from .harness import RawConn
        return await RawConn.open("127.0.0.1", self.port, volume)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
