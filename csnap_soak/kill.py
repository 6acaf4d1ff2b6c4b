"""SIGKILL csnapd at random moments under client load, restart it, verify every acknowledged op.

Usage (long runs, outside CI)::

    .venv/bin/python -m csnap_soak.kill --cycles 1000 --seed 1 [--dir /tmp/soak] [--keep]

What runs:

* one csnapd on a small sparse origin (2 MiB, 4 KiB chunks) and a sparse store;
* an **origin client process** (``csnap_client.connect``): three writer tasks, each owning a
  third of the origin, writing random 1 KiB-aligned ranges (1..16 KiB, so partial chunks and
  chunk-crossing writes) of stamped blocks;
* a **snapshot client process**: for every live snapshot one writer task (random ranges of
  the snapshot) and one reader task (random ranges, read through the origin while chunks are
  shared, i.e. under read locks);
* the controller (this process): creates a snapshot in most cycles at a random moment (in a
  thread, so a kill may land in the middle of a create), SIGKILLs csnapd after a random
  0.3..1.5 s, restarts it (clients reconnect, re-upload read locks and resend their queries
  on their own) and keeps at most ``--max-live`` snapshots (the oldest is verified in full,
  then deleted: deletions run in the background across later kills).

The model: every 1 KiB block holds a 16-byte stamp ``(magic, writer, seq, block)`` repeated
64 times, so any read identifies exactly which write produced each block, and a torn block
or a block from the wrong place is detected. Each client logs every acknowledged write
(start and end times on the shared CLOCK_MONOTONIC) and every read. Then:

* origin block: equals the last acknowledged write to it;
* a snapshot created over ``[cs, ce]`` (the control request's send and reply times; for a
  create interrupted by a kill that turns out to exist after the restart, ``ce`` is the
  restart time) holds, for each block it never wrote, the value of some origin write ``k``
  with ``k`` between the last write that ended before ``cs`` and the last that started
  before ``ce`` (the writes that overlapped the create may or may not be in it); blocks it
  wrote hold its last acknowledged snapshot write;
* a read over ``[rs, re]`` returns, per block, a value between the last write acknowledged
  before ``rs`` and the last started before ``re`` (same rule, on the block's history).

Output ends with ``kill cycles: N, acknowledged ops verified: M, lost: L`` and the result of
``csnap-check`` on the store after a clean stop. Exit 0 only if L == 0 and the check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import queue
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csnap_soak.daemon import Daemon
from csnap_soak.hapair import HAPair

BIN = Path(sys.executable).parent
BLOCK = 1024
CHUNK = 4096
ORIGIN_BYTES = 2 << 20
STORE_BYTES = 512 << 20
NBLOCKS = ORIGIN_BYTES // BLOCK
MAGIC = 0xC5AA0F11
STAMP = struct.Struct(">IIII")  # magic, writer, seq, block
ORIGIN_WRITERS = 3
INF = float("inf")


def stamp_block(writer: int, seq: int, block: int) -> bytes:
    return STAMP.pack(MAGIC, writer, seq, block) * (BLOCK // STAMP.size)


def stamp_range(writer: int, seq: int, block0: int, n: int) -> bytes:
    return b"".join(stamp_block(writer, seq, b) for b in range(block0, block0 + n))


def decode_blocks(data: bytes, block0: int) -> list[tuple[int, int] | str]:
    """Per block ``(writer, seq)``, or a string describing why the block is bad."""
    out: list[tuple[int, int] | str] = []
    for i in range(len(data) // BLOCK):
        blk = data[i * BLOCK:(i + 1) * BLOCK]
        head = blk[:STAMP.size]
        if blk != head * (BLOCK // STAMP.size):
            out.append(f"torn block {block0 + i}")
            continue
        magic, writer, seq, block = STAMP.unpack(head)
        if magic != MAGIC or block != block0 + i:
            out.append(f"block {block0 + i} holds block {block} (magic {magic:#x})")
            continue
        out.append((writer, seq))
    return out


# ----------------------------------------------------------------------------- clients


async def _connect(cfg: dict[str, Any], volume: str) -> Any:
    import csnap_client
    extra = {"servers": cfg["servers"]} if cfg.get("servers") else {}
    return await csnap_client.connect("127.0.0.1", cfg["port"], volume=volume,
                                      origin=cfg["origin"], store=cfg["store"],
                                      reconnect_timeout=120.0, reconnect_max_delay=0.2,
                                      **extra)


async def _retrying(op: Any, stop: asyncio.Event | None = None) -> bool:
    """Run ``op()`` until it succeeds; False if it kept failing (the op stays ambiguous)."""
    for attempt in range(200):
        try:
            await op()
            return True
        except (ConnectionError, OSError, TimeoutError) as exc:
            if attempt % 20 == 19:
                print(f"retrying after {exc!r}", file=sys.stderr, flush=True)
            await asyncio.sleep(0.05)
    return False


def _quiet() -> None:
    import logging
    logging.getLogger("csnap_client").setLevel(logging.ERROR)  # reconnect chatter


def origin_worker(cfg: dict[str, Any], cmds: Any, results: Any) -> None:
    _quiet()
    asyncio.run(_origin_main(cfg, cmds, results))


async def _origin_main(cfg: dict[str, Any], cmds: Any, results: Any) -> None:
    rng = random.Random(cfg["seed"] * 7919 + 1)
    vol = await _connect(cfg, "origin")
    stop = asyncio.Event()
    ledger: list[list[Any]] = []
    writers = cfg.get("writers", ORIGIN_WRITERS)
    region = (NBLOCKS - cfg.get("reserved", 0)) // writers

    async def writer(wid: int) -> None:
        lo, seq = (wid - 1) * region, 0
        r = random.Random(rng.random())
        while not stop.is_set():
            n = r.randint(1, 16)
            b0 = r.randrange(lo, lo + region - n + 1)
            seq += 1
            data = stamp_range(wid, seq, b0, n)
            t0 = time.monotonic()
            ok = await _retrying(lambda b0=b0, data=data: vol.write(b0 * BLOCK, data))
            ledger.append([wid, seq, b0, n, t0, time.monotonic() if ok else INF])
            await asyncio.sleep(r.random() * 0.004)

    tasks = [asyncio.create_task(writer(w)) for w in range(1, writers + 1)]
    results.put(("ready", "origin"))
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, cmds.get))[0] != "stop":
        pass
    stop.set()
    await asyncio.gather(*tasks)
    await vol.flush()
    await vol.close()
    path = Path(cfg["dir"]) / "ledger-origin.json"
    path.write_text(json.dumps(ledger))
    results.put(("done", "origin", len(ledger), vol.client.reconnects))


def snap_worker(cfg: dict[str, Any], cmds: Any, results: Any) -> None:
    _quiet()
    asyncio.run(_snap_main(cfg, cmds, results))


async def _snap_main(cfg: dict[str, Any], cmds: Any, results: Any) -> None:
    rng = random.Random(cfg["seed"] * 104729 + 2)
    writes: list[list[Any]] = []
    reads: list[list[Any]] = []
    bad: list[str] = []
    live: dict[str, tuple[Any, asyncio.Event, list[asyncio.Task[None]]]] = {}
    reconnects = 0

    async def writer(name: str, vol: Any, wid: int, stop: asyncio.Event) -> None:
        r, seq = random.Random(rng.random()), 0
        while not stop.is_set():
            n = r.randint(1, 8)
            b0 = r.randrange(0, NBLOCKS - n + 1)
            seq += 1
            data = stamp_range(wid, seq, b0, n)
            t0 = time.monotonic()
            ok = await _retrying(lambda b0=b0, data=data: vol.write(b0 * BLOCK, data))
            writes.append([name, wid, seq, b0, n, t0, time.monotonic() if ok else INF])
            await asyncio.sleep(r.random() * 0.02)

    async def reader(name: str, vol: Any, stop: asyncio.Event) -> None:
        r = random.Random(rng.random())
        while not stop.is_set():
            n = r.choice([1, 4, 16, 64, 256])
            b0 = r.randrange(0, NBLOCKS - n + 1)
            t0 = time.monotonic()
            box: list[bytes] = []

            async def read(b0: int = b0, n: int = n, box: list[bytes] = box) -> None:
                box.append(await vol.read(b0 * BLOCK, n * BLOCK))
            if not await _retrying(read):
                continue
            t1 = time.monotonic()
            vals = decode_blocks(box[-1], b0)
            bad.extend(f"{name}: {v}" for v in vals if isinstance(v, str))
            reads.append([name, b0, [list(v) if not isinstance(v, str) else None for v in vals],
                          t0, t1])
            await asyncio.sleep(r.random() * 0.01)

    loop = asyncio.get_running_loop()
    results.put(("ready", "snap"))
    next_wid = 100
    while True:
        cmd = await loop.run_in_executor(None, cmds.get)
        if cmd[0] == "add":
            name = cmd[1]
            vol = await _connect(cfg, name)
            stop = asyncio.Event()
            tasks = [asyncio.create_task(writer(name, vol, next_wid, stop)),
                     asyncio.create_task(reader(name, vol, stop))]
            next_wid += 1
            live[name] = (vol, stop, tasks)
            results.put(("added", name, next_wid - 1))
        elif cmd[0] in ("drop", "stop"):
            names = [cmd[1]] if cmd[0] == "drop" else list(live)
            for name in names:
                vol, stop, tasks = live.pop(name)
                stop.set()
                await asyncio.gather(*tasks)
                await vol.flush()
                reconnects += vol.client.reconnects
                await vol.close()
            if cmd[0] == "drop":
                results.put(("dropped", cmd[1]))
            else:
                break
    path = Path(cfg["dir"]) / "ledger-snap.json"
    path.write_text(json.dumps({"writes": writes, "reads": reads, "bad": bad}))
    results.put(("done", "snap", len(writes) + len(reads), reconnects))


# ----------------------------------------------------------------------------- model


def allowed(hist: list[tuple[Any, float, float]], rs: float, re: float) -> set[Any]:
    """Values a read over [rs, re] may see, for a block whose writes are ``hist`` (in order;
    ``hist[0]`` is the initial value, times -inf).  Entries may be sets (several values)."""
    lo = 0
    hi = 0
    for k, (_, t0, t1) in enumerate(hist):
        if t1 < rs:
            lo = k
        if t0 < re:
            hi = k
    out: set[Any] = set()
    for val, _, _ in hist[lo:max(lo, hi) + 1]:
        out |= val if isinstance(val, (set, frozenset)) else {val}
    return out


@dataclass
class Model:
    origin: list[list[tuple[Any, float, float]]] = field(
        default_factory=lambda: [[((0, 0), -INF, -INF)] for _ in range(NBLOCKS)])
    snaps: dict[str, tuple[float, float]] = field(default_factory=dict)
    snap_writes: dict[str, dict[int, list[tuple[Any, float, float]]]] = field(
        default_factory=dict)
    _at_create: dict[str, list[frozenset]] = field(default_factory=dict)

    def load(self, origin_ledger: list[list[Any]], snap_writes: list[list[Any]]) -> None:
        for wid, seq, b0, n, t0, t1 in sorted(origin_ledger, key=lambda e: (e[0], e[1])):
            for b in range(b0, b0 + n):
                self.origin[b].append(((wid, seq), t0, t1))
        for b in range(NBLOCKS):
            self.origin[b].sort(key=lambda e: e[1])
        for name, wid, seq, b0, n, t0, t1 in sorted(snap_writes, key=lambda e: (e[1], e[2])):
            per = self.snap_writes.setdefault(name, {})
            for b in range(b0, b0 + n):
                per.setdefault(b, []).append(((wid, seq), t0, t1))

    def at_create(self, name: str, block: int) -> frozenset:
        cache = self._at_create.get(name)
        if cache is None:
            cs, ce = self.snaps[name]
            cache = [frozenset(allowed(self.origin[b], cs, ce)) for b in range(NBLOCKS)]
            self._at_create[name] = cache
        return cache[block]

    def snap_allowed(self, name: str, block: int, rs: float, re: float) -> set[Any]:
        hist = [(self.at_create(name, block), -INF, -INF)]
        hist += self.snap_writes.get(name, {}).get(block, [])
        return allowed(hist, rs, re)


def verify_bytes(model: Model, name: str | None, data: bytes) -> tuple[int, list[str]]:
    """Check a whole volume image (``name`` None: the origin) at the end of the run."""
    problems: list[str] = []
    vals = decode_blocks(data, 0)
    for b, v in enumerate(vals):
        if isinstance(v, str):
            problems.append(f"{name or 'origin'}: {v}")
            continue
        ok = (allowed(model.origin[b], INF, INF) if name is None
              else model.snap_allowed(name, b, INF, INF))
        if v not in ok:
            problems.append(f"{name or 'origin'} block {b}: found {v}, expected one of "
                            f"{sorted(ok)[:4]}")
    return len(vals), problems


# ----------------------------------------------------------------------------- controller


async def _read_volume(d: Daemon | HAPair, name: str | None) -> bytes:
    cfg = {"port": d.port, "origin": str(d.origin), "store": str(d.store),
           "servers": getattr(d, "servers", None)}
    if name is None:
        return d.origin.read_bytes()
    vol = await _connect(cfg, name)
    try:
        return await vol.read(0, ORIGIN_BYTES)
    finally:
        await vol.close()


@dataclass
class Result:
    cycles: int = 0
    ops: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)
    restart_s: list[float] = field(default_factory=list)
    check_rc: int = -1
    snapshots_created: int = 0
    snapshots_verified: int = 0
    kills_during_create: int = 0
    reads_verified: int = 0
    writes_verified: int = 0
    blocks_checked: int = 0
    reconnects: int = 0
    #: HA: seconds from each SIGKILL of the leader to the first acknowledged write of a
    #: fresh client started at the kill (so approved by the new leader, never a cache)
    takeover_s: list[float] = field(default_factory=list)

    def figure(self) -> str:
        text = (f"kill cycles: {self.cycles}, acknowledged ops verified: {self.ops}, "
                f"lost: {self.lost}")
        if self.takeover_s:
            t = sorted(self.takeover_s)
            text += (f"; leader killed {len(t)} times, kill to first acknowledged write: "
                     f"p50 {t[len(t) // 2]:.2f} s, p99 {t[min(len(t) - 1, len(t) * 99 // 100)]:.2f}"
                     f" s, max {t[-1]:.2f} s")
        return text


def run(tmp: Path, cycles: int, seed: int = 1, max_live: int = 6,
        kill_min: float = 0.3, kill_max: float = 1.5, log: Any = print, ha: bool = False,
        writers: int = ORIGIN_WRITERS, ha_lease: float = 1.0) -> Result:
    """The whole soak in ``tmp``; returns the figures (see the module docstring).

    With ``ha`` the server is an HA pair (csnap_soak/hapair.py) and each cycle SIGKILLs
    the leader: the standby takes over, the killed node comes back as the standby, and
    the clients follow the leader through their ``servers`` list.
    """
    rng = random.Random(seed)
    d: Daemon | HAPair = (HAPair(tmp, ("--lease", "5"), lease=ha_lease) if ha
                          else Daemon(tmp, ("--lease", "5")))
    d.init(b"".join(stamp_block(0, 0, b) for b in range(NBLOCKS)), STORE_BYTES, CHUNK)
    res = Result()
    kills: list[float] = []
    res.restart_s.append(d.start())
    cfg = {"port": d.port, "origin": str(d.origin), "store": str(d.store), "dir": str(tmp),
           "seed": seed, "writers": writers, "servers": getattr(d, "servers", None),
           "reserved": PROBE_CHUNKS * CHUNK // BLOCK if ha else 0}
    probes: list[list[Any]] = []
    ctx = mp.get_context("spawn")
    oq, sq, rq = ctx.Queue(), ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=origin_worker, args=(cfg, oq, rq), daemon=True),
             ctx.Process(target=snap_worker, args=(cfg, sq, rq), daemon=True)]
    for p in procs:
        p.start()
    live: list[str] = []
    windows: dict[str, tuple[float, float]] = {}
    deleted: list[str] = []
    try:
        for _ in procs:
            _expect(rq, "ready", procs)
        for cycle in range(1, cycles + 1):
            run_for = rng.uniform(kill_min, kill_max)
            creator: threading.Thread | None = None
            outcome: dict[str, Any] = {}
            name = f"k{cycle}"
            if rng.random() < 0.8:
                # sometimes just before the kill, so kills land in the middle of creates
                delay = (max(0.0, run_for - rng.uniform(0, 0.06)) if rng.random() < 0.3
                         else rng.uniform(0, run_for))

                def create(name: str = name, delay: float = delay,
                           outcome: dict[str, Any] = outcome) -> None:
                    time.sleep(delay)
                    outcome["cs"] = time.monotonic()
                    try:
                        d.ctl("create", name)
                        outcome["ce"] = time.monotonic()
                    except (OSError, ConnectionError, RuntimeError) as exc:
                        outcome["error"] = exc
                creator = threading.Thread(target=create, daemon=True)
                creator.start()
            time.sleep(run_for)
            kills.append(time.monotonic())
            d.kill()
            probe = _probe_thread(cfg, cycle, probes) if ha else None
            res.restart_s.append(d.start())
            if probe is not None:
                probe.join(120)
            t_ready = time.monotonic()
            res.cycles = cycle
            if creator is not None:
                creator.join(60)
                if "ce" in outcome:
                    windows[name] = (outcome["cs"], outcome["ce"])
                elif "cs" in outcome:
                    res.kills_during_create += 1
                    if any(s["name"] == name for s in d.ctl("list")):
                        windows[name] = (outcome["cs"], t_ready)  # committed, reply lost
                if name in windows:
                    res.snapshots_created += 1
                    live.append(name)
                    sq.put(("add", name))
                    _expect(rq, "added", procs)
            while len(live) > max_live:
                old = live.pop(0)
                sq.put(("drop", old))
                _expect(rq, "dropped", procs)
                # its writer stopped: keep its image for the final check, then delete it
                (tmp / f"retired-{old}.img").write_bytes(asyncio.run(_read_volume(d, old)))
                d.ctl("delete", old)
                deleted.append(old)
            if cycle % 10 == 0 or cycle == cycles:
                log(f"cycle {cycle}/{cycles}: {len(live)} live snapshots, "
                    f"restart {res.restart_s[-1] * 1000:.0f} ms")
        # stop the load, then check everything with a fresh model of all ledgers
        oq.put(("stop",))
        sq.put(("stop",))
        for _ in procs:
            msg = _expect(rq, "done", procs)
            res.reconnects += msg[3]
        for p in procs:
            p.join(30)
        res.ops, res.lost = _verify(d, res, windows, live, deleted, probes)
        res.takeover_s = [e[5] - k for e, k in zip(probes, kills, strict=False) if e[5] != INF]
        code = d.stop()
        if code != 0:
            res.problems.append(f"csnapd exited {code} on SIGTERM")
            res.lost += 1
        check = subprocess.run([str(BIN / "csnap-check"), "--store", str(d.store), "--origin",
                                str(d.origin)], capture_output=True, text=True)
        res.check_rc = check.returncode
        if check.returncode != 0:
            res.problems.append(f"csnap-check exit {check.returncode}: {check.stdout}")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        if isinstance(d, HAPair):
            d.close()
        else:
            d.kill()
    return res


#: HA: origin blocks at the end kept for the takeover probe (one 4 KiB chunk each).
PROBE_WRITER = 99
PROBE_CHUNKS = 16


async def _probe(cfg: dict[str, Any], seq: int, ledger: list[list[Any]]) -> None:
    """A fresh client (no cache: the write must be approved by the leader) writes one
    probe chunk, retrying until a leader acknowledges; logged like any origin write."""
    import logging
    import logging.handlers
    per = CHUNK // BLOCK
    b0 = NBLOCKS - PROBE_CHUNKS * per + (seq % PROBE_CHUNKS) * per
    data = stamp_range(PROBE_WRITER, seq, b0, per)
    t0 = time.monotonic()
    # keep the client's debug log of this probe; written out only if it was slow
    trace = logging.handlers.MemoryHandler(capacity=100000, flushLevel=logging.CRITICAL + 1)
    trace.setFormatter(logging.Formatter("%(created).3f %(name)s %(levelname)s %(message)s"))
    client_log = logging.getLogger("csnap_client")
    client_log.addHandler(trace)
    level = client_log.level
    client_log.setLevel(logging.DEBUG)
    try:
        await _probe_once(cfg, seq, ledger, b0, per, data, t0)
    finally:
        client_log.removeHandler(trace)
        client_log.setLevel(level)
        if time.monotonic() - t0 > 3:
            with open(Path(cfg["dir"]) / f"slow-probe-{seq}.log", "w") as out:
                out.write(f"kill+probe start {t0:.3f}\n")
                for rec in trace.buffer:
                    out.write(trace.format(rec) + "\n")


async def _probe_once(cfg: dict[str, Any], seq: int, ledger: list[list[Any]], b0: int,
                      per: int, data: bytes, t0: float) -> None:
    vol = None
    for _ in range(600):
        try:
            vol = await _connect(cfg, "origin")
            break
        except (ConnectionError, OSError, TimeoutError):
            await asyncio.sleep(0.02)
    if vol is None:
        ledger.append([PROBE_WRITER, seq, b0, per, t0, INF])
        return
    try:
        ok = await _retrying(lambda: vol.write(b0 * BLOCK, data))
        ledger.append([PROBE_WRITER, seq, b0, per, t0, time.monotonic() if ok else INF])
    finally:
        await vol.close()


def _probe_thread(cfg: dict[str, Any], seq: int, ledger: list[list[Any]]) -> threading.Thread:
    _quiet()
    t = threading.Thread(target=lambda: asyncio.run(_probe(cfg, seq, ledger)), daemon=True)
    t.start()
    return t


def _verify(d: Daemon | HAPair, res: Result, windows: dict[str, tuple[float, float]],
            live: list[str], deleted: list[str],
            probes: list[list[Any]] | None = None) -> tuple[int, int]:
    tmp = d.tmp
    origin_ledger = json.loads((tmp / "ledger-origin.json").read_text()) + (probes or [])
    snap = json.loads((tmp / "ledger-snap.json").read_text())
    model = Model(snaps=windows)
    model.load(origin_ledger, snap["writes"])
    problems = list(snap["bad"])
    # every read done under load
    for name, b0, vals, t0, t1 in snap["reads"]:
        for i, v in enumerate(vals):
            if v is None:
                continue
            ok = model.snap_allowed(name, b0 + i, t0, t1)
            if tuple(v) not in ok:
                problems.append(f"read of {name} block {b0 + i} at [{t0:.3f},{t1:.3f}] "
                                f"returned {tuple(v)}, allowed {sorted(ok)[:4]}")
        res.reads_verified += 1
    # final images: the origin and every snapshot still alive; the images of deleted
    # snapshots were read (after their writer stopped) just before the delete
    for name in [None, *live, *deleted]:
        if name in deleted:
            data = (tmp / f"retired-{name}.img").read_bytes()
        else:
            data = asyncio.run(_read_volume(d, name))
        n, probs = verify_bytes(model, name, data)
        res.blocks_checked += n
        problems += probs
        if name is not None:
            res.snapshots_verified += 1
    unsure = sum(1 for e in origin_ledger if e[-1] == INF) + \
        sum(1 for e in snap["writes"] if e[-1] == INF)
    if unsure:
        problems.append(f"{unsure} writes never completed")
    res.writes_verified = len(origin_ledger) + len(snap["writes"]) - unsure
    res.problems += problems
    return res.writes_verified + res.reads_verified, len(problems)


def _expect(rq: Any, kind: str, procs: list[Any], timeout: float = 120.0) -> tuple:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            msg = rq.get(timeout=0.5)
        except queue.Empty:
            dead = [p for p in procs if not p.is_alive() and p.exitcode != 0]
            if dead:
                raise RuntimeError(f"client process died: exit {dead[0].exitcode}") from None
            continue
        if msg[0] != kind:
            raise RuntimeError(f"expected {kind}, got {msg}")
        return msg
    raise RuntimeError(f"timed out waiting for {kind}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-live", type=int, default=6, help="snapshots kept alive (default 6)")
    p.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--ha", action="store_true",
                   help="an HA pair over a real etcd: each cycle SIGKILLs the leader and "
                        "the standby takes over (failover soak)")
    p.add_argument("--ha-lease", type=float, default=1.0, metavar="SECONDS",
                   help="with --ha: the nodes' --ha-lease (default 1)")
    p.add_argument("--writers", type=int, default=ORIGIN_WRITERS,
                   help=f"origin writer tasks (default {ORIGIN_WRITERS})")
    args = p.parse_args(argv)
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="csnap-soak-"))
    tmp.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        res = run(tmp, args.cycles, args.seed, args.max_live, ha=args.ha,
                  writers=args.writers, ha_lease=args.ha_lease)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    for prob in res.problems[:50]:
        print("PROBLEM:", prob)
    rs = sorted(res.restart_s)
    print(f"snapshots created: {res.snapshots_created} (kills during create: "
          f"{res.kills_during_create}), verified in full at the end: {res.snapshots_verified}; "
          f"writes verified: {res.writes_verified}, reads verified: {res.reads_verified}, "
          f"blocks checked: {res.blocks_checked}, client reconnects: {res.reconnects}")
    print(f"restart to serving: p50 {rs[len(rs) // 2] * 1000:.0f} ms, "
          f"max {rs[-1] * 1000:.0f} ms; wall time {time.monotonic() - start:.0f} s")
    print(f"csnap-check exit: {res.check_rc}")
    if res.takeover_s:
        slow = sorted(enumerate(res.takeover_s, 1), key=lambda e: -e[1])[:5]
        print("slowest takeovers (cycle: seconds): " +
              ", ".join(f"{c}: {t:.2f}" for c, t in slow))
    print(res.figure())
    return 0 if res.lost == 0 and res.check_rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
