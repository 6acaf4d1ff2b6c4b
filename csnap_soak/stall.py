"""Stall soak: snapshots taken while an origin host stalls must never change.

Usage (long runs, outside CI)::

    .venv/bin/python -m csnap_soak.stall --cycles 200 [--seed 1] [--dir /tmp/stall] [--keep]

What runs:

* one csnapd on a sparse origin (4 KiB chunks) with a one-second lease;
* an **origin host** process (``HOST``): four writer tasks writing 4 KiB blocks at random
  chunks, each block stamped ``(magic, writer, seq, start time)`` on the shared monotonic
  clock, plus one task writing 1 MiB extents (those go through the library's I/O threads);
* the controller (this process), which per cycle: SIGKILLs and restarts csnapd (most
  cycles), waits until the host is writing again, **stalls the host** (in turn: its event
  loop blocked inside a device write, right after the library's last permission check; the
  whole process SIGSTOPped at a random moment; SIGSTOP while a 1 MiB write is between its
  check and the device), creates a snapshot while the host is stalled, reads the snapshot
  back at once, resumes the host and lets it write on. Old snapshots are verified and
  deleted so the store stays small.

Checked for every snapshot, at the end and before it is deleted: it reads exactly as it
did right after it was created (it never changed), and none of its blocks was written by
a write that started after the create returned. ``csnap-check`` must pass after a clean
stop. Output ends with ``stall cycles: N, snapshots verified: M, changed: 0, late blocks:
0``; exit 0 only then.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from csnap_client.protocol import messages as m

from .daemon import BIN, Daemon, exchange

CHUNK = 4096
KINDS = ("loop", "sigstop", "sigstop-mid-write")  # how the host stalls, in turn
STAMP = struct.Struct(">IIQd8x")  # magic, writer, seq, monotonic start time: 32 bytes
MAGIC = 0x57A11ED0

HOST = textwrap.dedent("""
    import asyncio, os, random, struct, sys, time
    import csnap_client
    from csnap_client import volume

    STAMP = struct.Struct(">IIQd8x")
    stall = []  # seconds the next device write holds the event loop (or its I/O thread)
    real = volume._pwrite_all

    def stalling_pwrite(fd, buf, off):
        # small writes run on the event loop: blocking here stalls the whole host right
        # between the library's last permission check and the device write; a large
        # write blocks its I/O thread at the same point
        if stall and (len(buf) >= 1 << 20) == (stall[-1][1] == "big"):
            seconds, _ = stall.pop()
            print("stalled", flush=True)
            time.sleep(seconds)
        real(fd, buf, off)

    volume._pwrite_all = stalling_pwrite

    async def writer(vol, w, cs, chunks, rng):
        seq = 0
        while True:
            seq += 1
            chunk = rng.randrange(chunks)
            block = STAMP.pack(0x57A11ED0, w, seq, time.monotonic())
            await vol.write(chunk * cs, block * (cs // STAMP.size))
            await asyncio.sleep(rng.choice((0, 0.001, 0.005)))

    async def big_writer(vol, w, cs, chunks, rng):
        seq, span = 0, (1 << 20) // cs
        while True:
            seq += 1
            first = rng.randrange(chunks - span)
            block = STAMP.pack(0x57A11ED0, w, seq, time.monotonic())
            await vol.write(first * cs, block * ((1 << 20) // STAMP.size))
            await asyncio.sleep(0.05)

    async def main(port, origin, cs, chunks):
        vol = await csnap_client.connect("127.0.0.1", port, volume="origin", origin=origin,
                                         reconnect_timeout=None)
        loop = asyncio.get_running_loop()

        def command():
            line = sys.stdin.readline().split()
            if len(line) == 3 and line[0] == "stall":
                stall.append((float(line[1]), line[2]))

        loop.add_reader(sys.stdin.fileno(), command)
        tasks = [asyncio.ensure_future(writer(vol, w, cs, chunks, random.Random(w)))
                 for w in range(4)]
        tasks.append(asyncio.ensure_future(big_writer(vol, 4, cs, chunks, random.Random(4))))
        print("ready", flush=True)
        await asyncio.gather(*tasks)

    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
""")


def read_snapshot(port: int, origin: Path, store: Path, name: str, chunks: int) -> list[bytes]:
    """Every chunk of snapshot ``name`` as a client reads it (read lock released)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        ident = exchange(s, m.identify(1, random.getrandbits(62), name))
        if ident["op"] != "IDENTIFY_OK":
            raise RuntimeError(f"cannot read snapshot {name}: {ident.get('message')}")
        reply = exchange(s, m.query_snapshot_read(2, [[0, chunks]]))
        where: dict[int, int | None] = dict.fromkeys(range(chunks))
        for c, n, st in reply["store"]:
            for i in range(n):
                where[c + i] = st + i
        out = []
        with open(origin, "rb") as o, open(store, "rb") as sf:
            for c in range(chunks):
                f, pos = (o, c) if where[c] is None else (sf, where[c])
                f.seek(pos * CHUNK)
                out.append(f.read(CHUNK))
        if reply["origin"]:
            finish = exchange(s, m.finish_snapshot_read(3, reply["id"]))
            if not finish.get("valid"):
                return read_snapshot(port, origin, store, name, chunks)  # lock broken: again
        exchange(s, m.detach(4))
        return out


def late_blocks(image: list[bytes], done: float) -> list[tuple[int, int, int, float]]:
    """Blocks of a snapshot image whose write started after the create returned."""
    late = []
    for chunk, data in enumerate(image):
        for off in range(0, len(data), 512):  # every sector: a write may land per sector
            magic, w, seq, started = STAMP.unpack_from(data, off)
            if magic == MAGIC and started > done:
                late.append((chunk, w, seq, round(started - done, 3)))
                break
    return late


@dataclass
class Taken:
    name: str
    done: float
    image: list[bytes]


@dataclass
class Result:
    cycles: int = 0
    verified: int = 0
    changed: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    stalls: dict[str, int] = field(default_factory=dict)
    cutoff_log_lines: int = 0
    check_rc: int = -1

    def figure(self) -> str:
        return (f"stall cycles: {self.cycles}, snapshots verified: {self.verified}, "
                f"changed: {len(self.changed)}, late blocks: {len(self.late)} "
                f"(stalls {dict(sorted(self.stalls.items()))}; creates that copied out what a "
                f"stalled client may still write: {self.cutoff_log_lines})")


class Soak:
    """One run: the daemon, the host, the snapshots taken and what was found."""

    def __init__(self, tmp: Path, chunks: int, rng: random.Random) -> None:
        self.d = Daemon(tmp, ("--lease", "1"))
        self.d.init(chunks * CHUNK, 1 << 30, CHUNK)
        self.chunks, self.rng = chunks, rng
        self.taken: list[Taken] = []
        self.result = Result()
        self.host: subprocess.Popen | None = None

    def start_host(self) -> None:
        with open(self.d.tmp / "host.log", "a") as log:  # the client library's own log
            self.host = subprocess.Popen(
                [str(BIN / "python"), "-c", HOST, str(self.d.port), str(self.d.origin),
                 str(CHUNK), str(self.chunks)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, text=True)
        if self.host.stdout.readline().strip() != "ready":
            raise RuntimeError("the origin host did not start")

    def wait_for_host(self, timeout: float = 30.0) -> None:
        """Until the host is identified (it reconnects by itself after a restart)."""
        deadline = time.monotonic() + timeout
        while not any(c["volume"] == "origin" for c in self.d.ctl("status")["clients"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the origin host did not reconnect")
            time.sleep(0.05)

    def cycle(self, n: int) -> None:
        if n == 0 or self.rng.random() < 0.8:
            self.d.kill()
            self.d.start()
        self.wait_for_host()
        time.sleep(self.rng.uniform(0.1, 0.6))
        kind = KINDS[n % len(KINDS)]
        self.result.stalls[kind] = self.result.stalls.get(kind, 0) + 1
        stall = self.rng.uniform(2.2, 3.0)  # longer than the server waits (2 leases)
        self._stall(kind, stall)
        name = f"s{n}"
        self.d.ctl("create", name)
        done = time.monotonic()
        self.taken.append(Taken(name, done, read_snapshot(
            self.d.port, self.d.origin, self.d.store, name, self.chunks)))
        self._resume(kind, stall)
        time.sleep(self.rng.uniform(0.2, 0.8))  # the host resumes on whatever it held
        while len(self.taken) > 4:
            self.verify(self.taken.pop(0), delete=True)
        self.result.cycles += 1

    def _stall(self, kind: str, seconds: float) -> None:
        assert self.host is not None
        if kind == "sigstop":
            self.host.send_signal(signal.SIGSTOP)
            return
        what = "small" if kind == "loop" else "big"
        self.host.stdin.write(f"stall {seconds if kind == 'loop' else 0.5} {what}\n")
        self.host.stdin.flush()
        if self.host.stdout.readline().strip() != "stalled":
            raise RuntimeError("the host did not stall")
        if kind == "sigstop-mid-write":
            self.host.send_signal(signal.SIGSTOP)  # while the big write waits to be done

    def _resume(self, kind: str, seconds: float) -> None:
        assert self.host is not None
        if kind.startswith("sigstop"):
            self.host.send_signal(signal.SIGCONT)
        else:
            time.sleep(max(0.0, seconds - 2.0))

    def verify(self, t: Taken, delete: bool = False) -> None:
        now = read_snapshot(self.d.port, self.d.origin, self.d.store, t.name, self.chunks)
        if now != t.image:
            diff = [c for c in range(self.chunks) if now[c] != t.image[c]]
            self.result.changed.append(f"{t.name}: chunks {diff[:8]} changed")
        for chunk, w, seq, after in late_blocks(t.image, t.done):
            self.result.late.append(f"{t.name}: chunk {chunk} from writer {w} write {seq}, "
                                    f"started {after}s after the create returned")
        self.result.verified += 1
        if delete:
            self.d.ctl("delete", t.name)

    def finish(self) -> None:
        for t in self.taken:
            self.verify(t)
        if self.host is not None:
            self.host.kill()
            self.host.wait()
        self.result.cutoff_log_lines = self.d.log.read_text().count(
            "copying them for the snapshot first")
        self.d.stop()
        check = subprocess.run([str(BIN / "csnap-check"), "--store", str(self.d.store),
                                "--origin", str(self.d.origin)], capture_output=True, text=True)
        self.result.check_rc = check.returncode
        print(check.stdout.strip().splitlines()[-1] if check.stdout.strip() else check.stderr)


def run(cycles: int, seed: int, tmp: Path, chunks: int = 1024) -> Result:
    """Run ``cycles`` stall cycles in ``tmp``; return what was found."""
    soak = Soak(tmp, chunks, random.Random(seed))
    soak.d.start()
    try:
        soak.start_host()
        for n in range(cycles):
            soak.cycle(n)
            if (n + 1) % 10 == 0:
                print(f"cycle {n + 1}/{cycles}: {soak.result.figure()}", flush=True)
    finally:
        soak.finish()
    return soak.result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m csnap_soak.stall", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cycles", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args(argv)
    tmp = args.dir or Path(tempfile.mkdtemp(prefix="csnap-stall-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        result = run(args.cycles, args.seed, tmp)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    for line in (result.changed + result.late)[:20]:
        print("PROBLEM:", line)
    print(f"{result.figure()}; csnap-check exit {result.check_rc}; "
          f"{time.monotonic() - t0:.0f} s")
    return 0 if not result.changed and not result.late and result.check_rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
