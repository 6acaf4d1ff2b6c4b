"""Power-loss crash-state enumeration for the snapshot store.

One *run* = a seeded random workload against a fresh store whose device is a
RecordingDevice (csnap_soak/recording.py).  The run yields the base image
(the store right after ``create``), the write log with barriers and marks,
and a reference model of what every client had been told.  ``enumerate_states``
turns the log into crash states; ``check_state`` recovers each one and
compares it with the model.

Crash model (CrashMonkey / dm-log-writes style, see docs/reliability-crash.md):
  * everything written before the last flush (barrier) is on disk;
  * of the writes issued after it, any subset may be on disk, landing in any
    order;
  * a write of several 512-byte sectors may be torn: its first (or last) k
    sectors are new, the rest old.  A one-sector write is atomic on real disks;
    we tear those too, at 256 bytes, as a stricter than real-world variant;
  * "flip" states add media damage on top: right after the flush that made a
    journal transaction durable (and so after its op was acknowledged), one
    random bit of one random block of that transaction is flipped.  Recovery
    must mend it, report it, and keep the acknowledged op.

Client model (what an acknowledgement promises):
  * ops run one at a time; before an op the test marks ("start", k), after
    ``commit()`` returns it marks ("ack", k).  ``commit()`` flushes, so every
    store write of an acked op precedes a barrier that precedes its mark.  A
    tenth of the origin writes are made durable the way a server does when a
    checkpoint is due (``_pipelined``): checkpoint captured, the write sealed
    and written while it is in flight, then both done;
  * the origin is a separate device.  The client writes new origin data only
    after the ack of the origin_write that copied the old data out (that is the
    protocol's rule), so at crash position p the origin holds the writes of the
    ops acked before p.  We treat the origin write as atomic and durable at
    once: the origin's own torn writes are the client's business, not the
    store's;
  * snapshot writes: the store maps the chunks (and copies them out); after
    the ack the client writes its data into the returned store chunks, on the
    store device (recorded), flushes and marks ("data", k).  Between ack and
    data mark the chunk may hold, sector by sector, the old or the new bytes.
  * a snapshot must hold exactly its data: the origin as it was when its
    creation was acked, plus its own completed snapshot writes;
  * the op in flight at the crash (started, not acked) is all or nothing: a
    created snapshot exists with correct content or not at all; a deleted
    one is either still fully readable or gone.  In-flight origin and
    snapshot writes are invisible either way (no client data was written yet);
  * with ``meta`` workloads, holds, releases, priority changes and renames
    too: every snapshot has the priority and hold count the model says (the
    one in flight: before or after), a renamed one exactly one of its two
    names, and a held snapshot is never deleted (delete refuses it);
  * with ``grow`` workloads, store and origin growths too (the store made on half its
    device): the store has the size the model says (the growth in flight: before or
    after), so has the origin, and every snapshot has the size and the data it was taken
    with, chunks the origin gained later included in neither.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from csnapd.store import create
from csnapd.store import format as fmt
from csnapd.store import superblock as sbk
from csnapd.store.check import check_store
from csnapd.store.device import Device, MemoryDevice
from csnapd.store.errors import CorruptionError, SnapshotHeld, StoreError, TooManySnapshots
from csnapd.store.grow import GrowthRefused, bitmap_reach
from csnapd.store.store import Store

from .recording import SECTOR, ImageDevice, RecordingDevice, replay, torn

CS = 4096
BS = 512
SUB = 64  # tear unit inside a one-sector write


@dataclass(frozen=True)
class Geometry:
    store_bytes: int = 2 << 20
    origin_chunks: int = 48
    chunk_size: int = CS
    block_size: int = BS
    journal_blocks: int = 128
    max_snapshots: int = 8
    max_live: int = 4
    max_write: int = 6  # chunks per origin write


#: Geometries the soak rotates through.  "small" is the CI one: 512-byte
#: blocks in 4 KiB chunks (k = 8), so trees split and the 128-block journal
#: wraps every few dozen operations.  "k1" makes every metadata block a whole
#: chunk (no carving); "deep" has enough exceptions for a two-level index.
GEOMETRIES = {
    "small": Geometry(),
    "k1": Geometry(block_size=4096),
    "wide": Geometry(store_bytes=4 << 20, origin_chunks=96, chunk_size=8192),
    "deep": Geometry(store_bytes=8 << 20, origin_chunks=768, max_live=3, max_write=96),
}


@dataclass
class Model:
    """What clients have been told: origin chunks and each snapshot's chunks."""

    origin: tuple[bytes, ...]
    snaps: dict[str, tuple[bytes, ...]]
    meta: dict[str, tuple[int, int]] = field(default_factory=dict)  # (priority, holds)
    store_chunks: int = 0  # grow workloads: the store's size (0: not checked)


@dataclass
class Op:
    index: int
    kind: str  # create, delete, owrite, swrite, step, reopen; hold, release, prio, rename;
    #            sgrow, ogrow (store and origin growth)
    name: str = ""
    new_name: str = ""  # rename
    # swrite: chunk -> (old bytes, new bytes)
    data: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)


@dataclass
class Run:
    seed: int
    geometry: Geometry
    base: bytes
    log: list[tuple]
    ops: list[Op]  # ops[k - 1] is op k
    models: list[Model]  # models[k] = after k acked ops


# ---------------------------------------------------------------------------
# the workload


def _new_chunk(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


META_KINDS = ("hold", "release", "prio", "rename")
GROW_KINDS = ("sgrow", "ogrow")
#: grow workloads: the store is made on the first half of its device (the rest is
#: the enlargement), and the origin may grow to this many times its size
GROW_START, ORIGIN_GROWTH = 2, 2


def run_workload(seed: int, nops: int = 40, geo: Geometry | None = None,
                 meta: bool = False, grow: bool = False, clones: bool = False) -> Run:
    """Run a seeded random workload, recording every store write and barrier.

    ``meta`` adds holds, releases, priority changes and renames (a fifth of the
    ops); without it a seed's workload is the same as before they existed.
    ``grow`` adds store and origin growths (a seventh of the ops): the store is made
    on half of its device, and grows within the bitmaps' reach or beyond it.
    ``clones`` adds clones of snapshots and steps of their background fill.
    """
    geo = geo or Geometry()
    rng = random.Random(seed)
    nchunks, cs = geo.origin_chunks, geo.chunk_size
    made = MemoryDevice(geo.store_bytes // GROW_START if grow else geo.store_bytes)
    create.create(made, nchunks * cs, chunk_size=cs, block_size=geo.block_size,
                  journal_bytes=geo.journal_blocks * geo.block_size,
                  max_snapshots=geo.max_snapshots)
    inner = MemoryDevice(geo.store_bytes)
    inner.data[:made.size] = made.data
    base = bytes(inner.data)
    origin_dev = MemoryDevice(nchunks * cs)
    origin = [_new_chunk(rng, cs) for _ in range(nchunks)]
    origin_dev.pwrite(0, b"".join(origin))
    rec = RecordingDevice(inner)
    store = _open(rec, origin_dev, meta)
    snaps: dict[str, list[bytes]] = {}
    info: dict[str, tuple[int, int]] = {}  # name -> (priority, holds)
    models = [Model(tuple(origin), {})]
    ops: list[Op] = []
    serial = 0

    def commit_and_ack(op: Op) -> None:
        store.commit()
        rec.mark(("ack", op.index))

    for k in range(1, nops + 1):
        live = sorted(snaps)
        choices = ["owrite"] * 7 + ["create"] * 4 + ["swrite"] * 4 + ["delete"] * 2
        if store.deleting:
            choices += ["step"] * 3
        choices += ["reopen"]
        kind = rng.choice(choices)
        if meta and rng.random() < 0.2:
            kind = rng.choice(META_KINDS)
        if grow and rng.random() < 1 / 7:
            kind = rng.choice(GROW_KINDS)
            if kind == "ogrow" and len(origin) >= ORIGIN_GROWTH * nchunks:
                kind = "sgrow"
        if clones and rng.random() < 0.25:
            kind = rng.choice(("clone", "cstep", "cstep"))
        if kind == "clone" and (store.cloning or not live or len(live) >= geo.max_live):
            kind = "cstep"
        filling_from = store.fill.parent if store.cloning else -1
        if kind == "delete" and not [n for n in live if not info[n][1]
                                     and store.snaps.find(n).slot != filling_from]:
            kind = "cstep" if store.cloning else kind
        if kind == "create" and len(live) >= geo.max_live:
            kind = "owrite"
        if kind == "delete" and live and all(info[n][1] for n in live):
            kind = "release"
        if kind == "release" and not any(info[n][1] for n in live):
            kind = "hold"
        if kind in ("delete", "swrite", *META_KINDS) and not live:
            kind = "create"
        op = Op(k, kind)
        rec.mark(("start", k))
        if kind == "create":
            serial += 1
            op.name = f"s{seed}-{serial}"
            try:
                store.create_snapshot(op.name)
            except TooManySnapshots:
                op.kind = kind = "step"  # all slots still being deleted: nothing changes
            else:
                snaps[op.name] = list(origin)
                info[op.name] = (0, 0)
            commit_and_ack(op)
        elif kind == "clone":
            serial += 1
            op.name = f"c{seed}-{serial}"
            parent = rng.choice(live)
            try:
                store.clone_snapshot(op.name, parent)
            except TooManySnapshots:
                op.kind = kind = "step"
            else:
                snaps[op.name] = list(snaps[parent])
                info[op.name] = (0, 0)
            commit_and_ack(op)
        elif kind == "cstep":
            store.clone_step(max_leaves=rng.randint(1, 3))
            commit_and_ack(op)
        elif kind == "delete":
            op.name = rng.choice([n for n in live if not info[n][1]
                                  and store.snaps.find(n).slot != filling_from])
            store.delete_snapshot(op.name)
            del snaps[op.name], info[op.name]
            commit_and_ack(op)
        elif kind == "hold":
            op.name = rng.choice(live)
            store.hold_snapshot(op.name)
            info[op.name] = (info[op.name][0], info[op.name][1] + 1)
            if rng.random() < 0.5:  # a held snapshot refuses to go; nothing changes
                try:
                    store.delete_snapshot(op.name)
                except SnapshotHeld:
                    pass
                else:
                    raise AssertionError(f"held snapshot {op.name} was deleted")
            commit_and_ack(op)
        elif kind == "release":
            op.name = rng.choice([n for n in live if info[n][1]])
            store.release_snapshot(op.name)
            info[op.name] = (info[op.name][0], info[op.name][1] - 1)
            commit_and_ack(op)
        elif kind == "prio":
            op.name = rng.choice(live)
            priority = rng.randint(-128, 127)
            store.set_snapshot(op.name, priority=priority)
            info[op.name] = (priority, info[op.name][1])
            commit_and_ack(op)
        elif kind == "rename":
            op.name = rng.choice(live)
            serial += 1
            op.new_name = f"r{seed}-{serial}"
            store.set_snapshot(op.name, name=op.new_name)
            snaps[op.new_name] = snaps.pop(op.name)
            info[op.new_name] = info.pop(op.name)
            commit_and_ack(op)
        elif kind == "sgrow":
            _grow_store(store, rng, geo)
            commit_and_ack(op)
        elif kind == "ogrow":
            added = [_new_chunk(rng, cs) for _ in range(rng.randint(1, 8))]
            origin_dev.grow((len(origin) + len(added)) * cs)  # the device was enlarged
            origin_dev.pwrite(len(origin) * cs, b"".join(added))
            origin.extend(added)
            store.grow_origin()
            commit_and_ack(op)
        elif kind == "owrite":
            ranges = _write_ranges(rng, len(origin), geo.max_write)
            if rng.random() < 0.1:
                _pipelined(store, lambda r=ranges, st=store: st.origin_write(r))
                rec.mark(("ack", op.index))
            else:
                store.origin_write(ranges)
                commit_and_ack(op)
            for start, count in ranges:  # the client writes after the ack
                for c in range(start, start + count):
                    origin[c] = _new_chunk(rng, cs)
                    origin_dev.pwrite(c * cs, origin[c])
        elif kind == "swrite":
            op.name = rng.choice(live)
            slot = store.snaps.find(op.name).slot
            size = len(snaps[op.name])
            start = rng.randrange(size)
            count = min(size - start, rng.randint(1, 4))
            mapped = store.snapshot_write(slot, [(start, count)])
            commit_and_ack(op)
            for chunk, store_chunk in mapped:
                new = _new_chunk(rng, cs)
                op.data[chunk] = (snaps[op.name][chunk], new)
                rec.pwrite(store_chunk * cs, new)
                snaps[op.name][chunk] = new
            rec.flush()
            rec.mark(("data", k))
        elif kind == "step":
            store.delete_step(max_leaves=rng.randint(1, 3))
            commit_and_ack(op)
        elif kind == "reopen":
            store.close()
            store = _open(rec, origin_dev, meta)
            rec.mark(("ack", k))
        ops.append(op)
        models.append(Model(tuple(origin), {n: tuple(v) for n, v in snaps.items()},
                            dict(info), store.store_chunks if grow else 0))
    store.close()
    return Run(seed, geo, base, list(rec.log), ops, models)


def _grow_store(store: Store, rng: random.Random, geo: Geometry) -> None:
    """Grow the store: within the bitmaps' reach, just past it, or to the whole device."""
    f, cs = store.sb, geo.chunk_size
    reach, top = bitmap_reach(f), geo.store_bytes // cs
    targets = [c for c in (min(reach, top), reach + 8, top) if f.store_chunks < c <= top]
    if not targets:
        return
    try:
        store.grow_store(rng.choice(targets) * cs)
    except GrowthRefused:
        pass  # too small a step past the reach: nothing changes


def _open(dev: Device, origin: Device, meta: bool) -> Store:
    """Open the workload's store; ``meta`` workloads also count its space at once, as a
    server does in the background, so that clean closes write the counts to the table
    (format 8.1) and recovered states check them."""
    store = Store.open(dev, origin)
    if meta:
        while store.count_step(64):
            pass
    return store


def _write_ranges(rng: random.Random, nchunks: int, max_write: int) -> list[tuple[int, int]]:
    """One run of chunks, or (one time in three) single chunks scattered over the origin,
    as a group commit of many clients gives: records for many leaves in one transaction."""
    if rng.random() < 1 / 3:
        many = rng.randint(4, max(16, max_write // 3))
        chunks = sorted(rng.sample(range(nchunks), min(nchunks, many)))
        return [(c, 1) for c in chunks]
    start = rng.randrange(nchunks)
    return [(start, min(nchunks - start, rng.randint(1, max_write)))]


def _pipelined(store: Store, change) -> None:  # noqa: ANN001
    """Make ``change`` durable the way a server does when a checkpoint is due.

    The checkpoint is captured first; the change is made and sealed while it
    is in flight; the checkpoint is written in parts (net/commit.py), and the
    sealed transaction goes between its first part (some home writes) and the
    rest, and is done before the checkpoint, as the server's worker does it.
    """
    ck = store.seal_checkpoint()
    change()
    sealed = store.seal() if store.can_seal() else None
    part = max(1, len(ck.images) // 2)
    done = ck.write_part(part)
    if sealed is not None:
        sealed.write()
        store.sealed_done(sealed)
    while not done:
        done = ck.write_part(part)
    store.checkpoint_done(ck)
    store.commit()  # whatever did not fit before the checkpoint was done


# ---------------------------------------------------------------------------
# crash states


@dataclass
class CrashState:
    kind: str  # prefix, torn-head, torn-tail, torn-sub, reorder, flip
    position: int  # log entries issued before the crash
    image: bytearray
    detail: str = ""

    def spec(self, seed: int) -> str:
        return f"seed {seed} {self.kind} at log entry {self.position}{' ' + self.detail if self.detail else ''}"


def _subsets(m: int, rng: random.Random, limit: int = 64) -> Iterator[list[int]]:
    """Subsets of range(m) that are not prefixes (prefix states cover those)."""
    prefixes = {tuple(range(j)) for j in range(m + 1)}
    if m <= 6:
        for bits in range(1 << m):
            sub = [i for i in range(m) if bits >> i & 1]
            if tuple(sub) not in prefixes:
                yield sub
        return
    seen: set[tuple[int, ...]] = set()
    tries = 0
    while len(seen) < limit and tries < 8 * limit:
        tries += 1
        sub = tuple(sorted(rng.sample(range(m), rng.randint(1, m - 1))))
        if sub in prefixes or sub in seen:
            continue
        seen.add(sub)
        yield list(sub)


def _journal_range(run: Run) -> tuple[int, int]:
    """Byte range of the journal region of the run's store."""
    f = sbk.load(ImageDevice(bytearray(run.base)))[0]
    bs = f.block_size
    return f.journal_start * bs, (f.journal_start + f.journal_blocks) * bs


def _flip_state(cur: bytearray, writes: list[tuple[int, bytes]], position: int, bs: int,
                rng: random.Random) -> CrashState:
    """The durable image with one bit flipped in one block of the last flushed transaction."""
    blocks = [off + i * bs for off, data in writes for i in range(len(data) // bs)]
    at = rng.choice(blocks)
    bit = rng.randrange(bs * 8)
    image = bytearray(cur)
    image[at + bit // 8] ^= 1 << (bit % 8)
    return CrashState("flip", position, image,
                      f"block {at // bs} (block {blocks.index(at)} of {len(blocks)}) bit {bit}")


def enumerate_states(run: Run, rng: random.Random) -> Iterator[CrashState]:
    """Every prefix; torn variants of every write; reordered subsets per barrier interval;
    a bit flip in each transaction made durable by a flush."""
    cur = bytearray(run.base)
    durable = bytes(run.base)
    window: list[tuple[int, bytes]] = []
    jlo, jhi = _journal_range(run)
    bs = run.geometry.block_size
    flushed_txn: list[tuple[int, bytes]] = []  # journal writes of the last flushed window
    for idx, entry in enumerate(run.log):
        tag = entry[0]
        if tag == "W":
            _, offset, data = entry
            if flushed_txn:  # crash after the flush (and the ack) but before the next write
                yield _flip_state(cur, flushed_txn, idx, bs, rng)
                flushed_txn = []
            yield CrashState("prefix", idx, bytearray(cur))
            old = bytes(cur[offset:offset + len(data)])
            sectors = len(data) // SECTOR
            if sectors > 1:
                for head in (True, False):
                    k = rng.randrange(1, sectors)
                    image = bytearray(cur)
                    image[offset:offset + len(data)] = torn(old, data, k, head)
                    yield CrashState("torn-head" if head else "torn-tail", idx + 1, image,
                                     f"{k}/{sectors} sectors new")
            elif old != data:
                # Stricter than real disks (a sector is atomic): tear inside it,
                # at a 64-byte boundary so header, fields and padding all mix.
                k = rng.randrange(1, len(data) // SUB)
                head = rng.random() < 0.5
                image = bytearray(cur)
                image[offset:offset + len(data)] = torn(old, data, k, head, unit=SUB)
                yield CrashState("torn-sub", idx + 1, image,
                                 f"{'first' if head else 'last'} {k * SUB} bytes new")
            cur[offset:offset + len(data)] = data
            window.append((offset, data))
        elif tag == "F":
            if len(window) > 1:
                for sub in _subsets(len(window), rng):
                    order = list(sub)
                    rng.shuffle(order)
                    image = replay(durable, (window[i] for i in order))
                    yield CrashState("reorder", idx, image,
                                     f"{len(sub)}/{len(window)} writes {order[:8]}")
            durable = bytes(cur)
            flushed_txn = [w for w in window if jlo <= w[0] < jhi] or flushed_txn
            window = []
    if flushed_txn:
        yield _flip_state(cur, flushed_txn, len(run.log), bs, rng)
    yield CrashState("prefix", len(run.log), bytearray(cur))


# ---------------------------------------------------------------------------
# checking one crash state


@dataclass
class Expectation:
    acked: int
    inflight: Op | None
    pending_data: Op | None


def expectations(run: Run) -> list[Expectation]:
    """Expectation for every crash position 0..len(log)."""
    out = []
    acked = started = 0
    data_done: set[int] = set()
    for idx in range(len(run.log) + 1):
        inflight = run.ops[started - 1] if started > acked else None
        pending = None
        if acked and run.ops[acked - 1].kind == "swrite" and acked not in data_done:
            pending = run.ops[acked - 1]
        out.append(Expectation(acked, inflight, pending))
        if idx == len(run.log):
            break
        entry = run.log[idx]
        if entry[0] == "M":
            what, k = entry[1]
            if what == "ack":
                acked = k
            elif what == "start":
                started = k
            elif what == "data":
                data_done.add(k)
    return out


def _sectorwise(got: bytes, old: bytes, new: bytes) -> bool:
    for i in range(0, len(got), SECTOR):
        piece = got[i:i + SECTOR]
        if piece != old[i:i + SECTOR] and piece != new[i:i + SECTOR]:
            return False
    return True


def origin_device(model: Model) -> MemoryDevice:
    dev = MemoryDevice(len(model.origin) * len(model.origin[0]))
    dev.data[:] = b"".join(model.origin)
    return dev


def verify_model(store: Store, run: Run, exp: Expectation) -> list[str]:
    """Compare an open store with the model; return failures (empty = good)."""
    model = run.models[exp.acked]
    after = run.models[exp.acked + 1] if exp.inflight is not None else None
    failures = []
    visible = {e.name: e for e in store.snaps.visible()}
    flight = exp.inflight
    maybe_new = maybe_gone = None
    if flight is not None and flight.kind in ("create", "clone", "delete"):
        maybe_new, maybe_gone = (None, flight.name) if flight.kind == "delete" \
            else (flight.name, None)
    elif flight is not None and flight.kind == "rename":
        maybe_new, maybe_gone = flight.new_name, flight.name
        if (flight.name in visible) == (flight.new_name in visible):
            failures.append(f"rename of {flight.name} to {flight.new_name} in flight: "
                            "the snapshot must have exactly one of the two names")
    for name in model.snaps:
        if name not in visible and name != maybe_gone:
            failures.append(f"acked snapshot {name} is missing")
    for name in visible:
        if name not in model.snaps and name != maybe_new:
            failures.append(f"snapshot {name} exists but the model says it must not")
    cs = store.chunk_size
    sizes = {m.store_chunks for m in (model, after) if m is not None}
    if model.store_chunks and store.store_chunks not in sizes:
        failures.append(f"store has {store.store_chunks} chunks; the model says "
                        f"{' or '.join(map(str, sorted(sizes)))}")
    origins = {len(m.origin) * cs for m in (model, after) if m is not None}
    if store.sb.origin_bytes not in origins:
        failures.append(f"origin is {store.sb.origin_bytes} bytes; the model says "
                        f"{' or '.join(map(str, sorted(origins)))}")
    for name, entry in sorted(visible.items()):
        if entry.squashed:
            failures.append(f"snapshot {name} is squashed")
            continue
        if name in model.snaps:
            want = model.snaps[name]
        elif after is not None and name in after.snaps:
            want = after.snaps[name]
        else:
            continue
        failures += _meta_problems(entry, model, after, flight)
        pending = exp.pending_data if exp.pending_data and exp.pending_data.name == name else None
        if store.snapshot_bytes(entry.slot) != len(want) * cs:
            failures.append(f"snapshot {name} is {store.snapshot_bytes(entry.slot)} bytes, "
                            f"not {len(want) * cs}")
            continue
        for chunk, store_chunk in store.snapshot_map(entry.slot, [(0, len(want))]):
            if store_chunk is None:
                got = store.origin.pread(chunk * cs, cs)
            else:
                got = store.dev.pread(store_chunk * cs, cs)
            if got == want[chunk]:
                continue
            if pending and chunk in pending.data and _sectorwise(got, *pending.data[chunk]):
                continue
            where = "origin" if store_chunk is None else f"store chunk {store_chunk}"
            failures.append(f"snapshot {name} chunk {chunk} ({where}) holds wrong data")
            break
    return failures


def _meta_problems(entry: fmt.SnapEntry, model: Model, after: Model | None,
                   flight: Op | None) -> list[str]:
    """Priority and holds of a visible snapshot as the model says (either side of the
    op in flight when that op is on this snapshot)."""
    name = entry.name
    allowed = set()
    if name in model.meta:
        allowed.add(model.meta[name])
    if after is not None and flight is not None and name in (flight.name, flight.new_name) \
            and name in after.meta:
        allowed.add(after.meta[name])
    if not allowed:  # a workload without meta ops (models before they existed)
        return []
    got = (entry.priority, entry.use_count)
    if got in allowed:
        return []
    return [f"snapshot {name} has priority {got[0]} and {got[1]} hold(s); the model says "
            f"{' or '.join(f'{p} and {h}' for p, h in sorted(allowed))}"]


def _problems(store: Store) -> list[str]:
    """check_store's findings, less a torn superblock slot that recovery rewrote.

    A crash while a checkpoint writes its superblock leaves that slot torn;
    open then uses the other slot and notes the damage (the checker repeats
    the note).  That is the designed outcome, not a problem, provided the
    read-write open's own checkpoint has since rewritten the slot validly.
    """
    report = check_store(store)
    healed = all(g is not None for g in _slot_generations(store.dev, store.block_size))
    return [f"check: {p.severity}: {p.message}" + (f" [block {p.block}]" if p.block is not None else "")
            for p in report.problems
            if not (healed and p.message.startswith("superblock slot "))]


@dataclass
class Tally:
    states: int = 0
    failures: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    double: int = 0
    continued: int = 0
    examples: list[str] = field(default_factory=list)
    max_recover_s: float = 0.0

    def count(self, kind: str) -> None:
        self.states += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def fail(self, spec: str, problems: list[str]) -> None:
        self.failures += 1
        if len(self.examples) < 20:
            self.examples.append(f"{spec}: {'; '.join(problems[:5])}")

    def merge(self, other: Tally) -> None:
        self.states += other.states
        self.failures += other.failures
        self.double += other.double
        self.continued += other.continued
        for k, v in other.by_kind.items():
            self.by_kind[k] = self.by_kind.get(k, 0) + v
        self.examples.extend(other.examples[:max(0, 20 - len(self.examples))])
        self.max_recover_s = max(self.max_recover_s, other.max_recover_s)

    def figure(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items()))
        return (f"crash states tried: {self.states}, failures: {self.failures} "
                f"({kinds}; double-crash {self.double}, continued after recovery "
                f"{self.continued}; slowest recovery {self.max_recover_s * 1000:.1f} ms)")


def recover_and_verify(image: bytearray, run: Run, exp: Expectation,
                       tally: Tally) -> tuple[Store | None, RecordingDevice | None, list[str]]:
    """Open (recover) a crash image, run the checker, compare with the model."""
    rec = RecordingDevice(ImageDevice(image))
    growing = exp.inflight is not None and exp.inflight.kind == "ogrow"
    # an origin growth in flight: the device was enlarged before it started
    origin = origin_device(run.models[exp.acked + 1 if growing else exp.acked])
    newest = _newest_slot(rec, run.geometry.block_size)
    t0 = time.perf_counter()
    try:
        store = Store.open(rec, origin)
    except (StoreError, OSError) as exc:
        return None, None, [f"recovery failed: {type(exc).__name__}: {exc}"]
    tally.max_recover_s = max(tally.max_recover_s, time.perf_counter() - t0)
    problems = []
    bs = store.block_size
    first_super = next((e[1] // bs for e in rec.log if e[0] == "W" and e[1] in (0, bs)), None)
    if first_super is not None and first_super == newest:
        # A torn write here would leave only the older slot, whose journal may
        # already be reused: recovery must write the other slot (format 4.3).
        problems.append(f"recovery's checkpoint overwrites the newest valid superblock "
                        f"slot {newest}")
    try:
        problems += _problems(store) + verify_model(store, run, exp)
    except (StoreError, OSError) as exc:
        problems.append(f"reading the recovered store failed: {type(exc).__name__}: {exc}")
    return store, rec, problems


def _slot_generations(dev: Device, block_size: int) -> list[int | None]:
    """Generation of each superblock slot, None where it does not verify."""
    out: list[int | None] = []
    for slot in (0, 1):
        try:
            out.append(fmt.decode_super(dev.pread(slot * block_size, block_size), slot).generation)
        except CorruptionError:
            out.append(None)
    return out


def _newest_slot(dev: Device, block_size: int) -> int | None:
    gens = [(g, slot) for slot, g in enumerate(_slot_generations(dev, block_size))
            if g is not None]
    return max(gens)[1] if gens else None


def check_state(state: CrashState, run: Run, exp: Expectation, tally: Tally,
                rng: random.Random, double_rate: float = 0.1,
                continue_rate: float = 0.05) -> None:
    """Recover one crash state and verify it; on a sample, crash recovery too."""
    spec = state.spec(run.seed)
    base = bytes(state.image) if double_rate else b""
    tally.count(state.kind)
    store, rec, problems = recover_and_verify(state.image, run, exp, tally)
    if store is not None and state.kind == "flip" and not store.recovery.journal_corrected:
        problems.append("the flipped journal block was not reported as corrected")
    if problems:
        tally.fail(spec, problems)
        return
    assert store is not None and rec is not None
    if rng.random() < double_rate:
        # Crash during recovery (its checkpoint writes), then recover again.
        writes = rec.writes()
        bs = store.block_size
        supers = [i for i, (off, _) in enumerate(writes) if off in (0, bs)]
        if supers and rng.random() < 0.3:
            cut = supers[0]  # tear recovery's own checkpoint superblock
            tear = True
        else:
            cut = rng.randint(0, len(writes))
            tear = rng.random() < 0.5
        partial = list(writes[:cut])
        if cut < len(writes) and tear:
            off, data = writes[cut]
            old = base[off:off + len(data)]
            unit = SECTOR if len(data) > SECTOR else SUB
            partial.append((off, torn(old, data, rng.randrange(1, len(data) // unit), True,
                                      unit=unit)))
        tally.count("double")
        tally.double += 1
        _, _, problems = recover_and_verify(replay(base, partial), run, exp, tally)
        if problems:
            tally.fail(f"{spec} + crash in recovery after {cut}/{len(writes)} writes", problems)
            return
    if rng.random() < continue_rate:
        tally.continued += 1
        problems = _continue(store, run, exp, rng)
        if problems:
            tally.fail(f"{spec} + work after recovery", problems)


def _continue(store: Store, run: Run, exp: Expectation, rng: random.Random) -> list[str]:
    """Use a recovered store: new snapshot, origin writes, a delete pass; verify again."""
    cs, n = store.chunk_size, store.origin_chunks

    def size(slot: int) -> int:
        return -(-store.snapshot_bytes(slot) // cs)
    try:
        store.count_step(2)  # the space count a server starts after recovery, partly done
        for e in list(store.snaps.visible()):
            if e.name not in run.models[exp.acked].snaps and not e.use_count:
                store.delete_snapshot(e.name)  # an in-flight create (or rename) that made it
        store.commit()
        names = [e.name for e in store.snaps.visible()]
        if len(store.snaps.visible()) < run.geometry.max_live and any(
                e.state == 0 for e in store.snaps.entries):
            store.create_snapshot("after-crash")
            store.commit()
            names.append("after-crash")
        want: dict[str, list[bytes]] = {}
        for name in names:
            slot = store.snaps.find(name).slot
            want[name] = [store.dev.pread(sc * cs, cs) if sc is not None
                          else store.origin.pread(c * cs, cs)
                          for c, sc in store.snapshot_map(slot, [(0, size(slot))])]
        start = rng.randrange(n)
        count = min(n - start, 8)
        store.origin_write([(start, count)])
        store.commit()
        for c in range(start, start + count):
            store.origin.pwrite(c * cs, rng.randbytes(cs))
        while store.clone_step(8):
            store.commit()
        store.commit()
        while store.deleting:
            store.delete_step(8)
            store.commit()
        while store.count_step(64):
            pass
        problems = _problems(store)  # the kept space counts included
        for name in names:
            slot = store.snaps.find(name).slot
            for c, sc in store.snapshot_map(slot, [(0, size(slot))]):
                got = store.dev.pread(sc * cs, cs) if sc is not None else store.origin.pread(c * cs, cs)
                if got != want[name][c]:
                    problems.append(f"after more work, snapshot {name} chunk {c} changed")
                    break
        return problems
    except StoreError as exc:
        return [f"work after recovery failed: {type(exc).__name__}: {exc}"]


def run_seed(seed: int, nops: int = 40, max_states: int | None = None,
             geo: Geometry | None = None, double_rate: float = 0.1,
             continue_rate: float = 0.05, stop_on_failure: bool = False,
             meta: bool = False, grow: bool = False, clones: bool = False) -> Tally:
    """Record one workload and check its crash states (all, or the first max_states)."""
    run = run_workload(seed, nops, geo, meta, grow, clones)
    exps = expectations(run)
    rng = random.Random(seed * 7919 + 1)
    tally = Tally()
    for state in enumerate_states(run, rng):
        if max_states is not None and tally.states >= max_states:
            break
        check_state(state, run, exps[state.position], tally, rng, double_rate, continue_rate)
        if stop_on_failure and tally.failures:
            break
    return tally
