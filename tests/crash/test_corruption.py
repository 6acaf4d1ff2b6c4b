"""Damaged metadata is detected by checksum and never turned into a wrong mapping.

For every metadata area (newest superblock slot, both slots, a B-tree index
node, leaves, chunk and metadata bitmap blocks, the snapshot table, a journal
commit block and a journal image with later valid transactions) we flip single
bits at seeded positions, zero the block, and overwrite it with another block
of the same kind (a misdirected write).  Each damaged store must either refuse
to open with an error naming the damaged block, or open and have check_store
report a problem naming it; and every mapping it still serves must give the
model's bytes.

The second half runs the real ``csnap-check`` on file-backed stores: exit 2
when the store cannot be read, 1 when the checker finds problems, and
``--repair`` fixing leaked chunks, leaked metadata blocks and a wrong free
count (exit 0, saying what it did).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from csnap_soak.recording import ImageDevice
from csnapd.store import create
from csnapd.store import format as fmt
from csnapd.store import journal as jnl
from csnapd.store import superblock as sbk
from csnapd.store.check import check_store
from csnapd.store.device import FileDevice, MemoryDevice
from csnapd.store.errors import CorruptionError, FormatError, StoreError
from csnapd.store.store import Store
from csnapd.store.walk import walk_tree

CS, BS = 4096, 512
ORIGIN_CHUNKS = 64
STORE_BYTES = 2 << 20


@dataclass
class Populated:
    image: bytes  # the store device
    origin: bytes  # the origin device
    snaps: dict[str, list[bytes]]  # what each snapshot must read
    pending: int  # journal transactions not yet checkpointed


def _populate(seed: int, dev, origin_dev: MemoryDevice, pending_txns: int) -> dict[str, list[bytes]]:
    """Three snapshots over a rewritten origin (so the tree has index nodes)."""
    rng = random.Random(seed)
    origin = [rng.randbytes(CS) for _ in range(ORIGIN_CHUNKS)]
    origin_dev.pwrite(0, b"".join(origin))
    store = Store.open(dev, origin_dev)
    snaps: dict[str, list[bytes]] = {}
    for name in ("alpha", "beta", "gamma"):
        store.create_snapshot(name)
        store.commit()
        snaps[name] = list(origin)
        store.origin_write([(0, ORIGIN_CHUNKS)])
        store.commit()
        for c in range(0, ORIGIN_CHUNKS, 2 if name == "beta" else 1):
            origin[c] = rng.randbytes(CS)
            origin_dev.pwrite(c * CS, origin[c])
    slot = store.snaps.find("beta").slot
    mapped = store.snapshot_write(slot, [(5, 3)])
    store.commit()
    for chunk, store_chunk in mapped:  # the client writes after the ack
        new = rng.randbytes(CS)
        dev.pwrite(store_chunk * CS, new)
        snaps["beta"][chunk] = new
    dev.flush()
    store.close()
    if pending_txns:
        store = Store.open(dev, origin_dev)
        for i in range(pending_txns):  # committed, never checkpointed: a crash
            store.create_snapshot(f"late{i}")
            store.commit()
            snaps[f"late{i}"] = list(origin)
    return snaps


def build(seed: int = 7, pending_txns: int = 0) -> Populated:
    dev, origin = MemoryDevice(STORE_BYTES), MemoryDevice(ORIGIN_CHUNKS * CS)
    create.create(dev, origin.size, chunk_size=CS, block_size=BS, journal_bytes=128 * BS,
                  max_snapshots=8)
    snaps = _populate(seed, dev, origin, pending_txns)
    return Populated(bytes(dev.data), bytes(origin.data), snaps, pending_txns)


def open_image(image: bytes | bytearray, origin: bytes, readonly: bool = True) -> Store:
    dev = ImageDevice(bytearray(image))
    odev = MemoryDevice(len(origin))
    odev.data[:] = origin
    return Store.open(dev, odev, readonly=readonly)


# ---------------------------------------------------------------------------
# where the metadata lives


def targets(p: Populated) -> dict[str, list[int]]:
    """Metadata area -> block numbers to damage."""
    store = open_image(p.image, p.origin)
    f = store.sb
    nodes = [v.addr for v in walk_tree(store) if v.depth > 0]
    leaves = [v.addr for v in walk_tree(store) if v.depth == 0]
    slots = sbk.read_slots(ImageDevice(bytearray(p.image)))
    newest = max((s for s in slots if s[1] is not None), key=lambda s: s[1].generation)[0]
    out = {
        "superblock (newest slot)": [newest],
        "b-tree index node": nodes[:1],
        "b-tree leaf": [leaves[0], leaves[len(leaves) // 2], leaves[-1]],
        "chunk bitmap": [f.cbitmap_start],
        "metadata bitmap": list(range(f.mbitmap_start, f.mbitmap_start + f.mbitmap_blocks)),
        "snapshot table": [f.snaptab_start, f.snaptab_start + 1],
    }
    assert f.depth >= 1 and nodes, "the populated tree must have index nodes"
    assert len(leaves) >= 3
    return out


def pending_scan(p: Populated) -> tuple[fmt.SuperFields, jnl.ScanResult]:
    f = sbk.load(ImageDevice(bytearray(p.image)))[0]
    return f, jnl.scan(ImageDevice(bytearray(p.image)), f.journal_start, f.journal_blocks,
                       f.block_size, f.store_id, f.journal_tail, f.journal_seq)


def journal_targets(p: Populated) -> dict[str, list[int]]:
    """Each kind of journal block in the oldest pending transaction (later ones
    valid) and in the newest one (nothing after it): both must be mended."""
    f, scan = pending_scan(p)
    assert len(scan.transactions) == p.pending
    first, last = scan.transactions[0], scan.transactions[-1]

    def at(t: jnl.Transaction, offset: int) -> int:
        return f.journal_start + (t.position + offset) % f.journal_blocks

    return {"journal leading commit record": [at(first, 0), at(last, 0)],
            "journal image": [at(first, 1), at(last, len(last.images))],
            "journal parity": [at(first, first.span - 2), at(last, last.span - 2)],
            "journal trailing commit record": [at(first, first.span - 1),
                                               at(last, last.span - 1)]}


# ---------------------------------------------------------------------------
# damage and verdicts


def damages(image: bytes, block: int, rng: random.Random, donor: int | None):
    """(label, damaged image) variants for one block."""
    lo = block * BS
    for _ in range(8):
        bit = rng.randrange(BS * 8)
        img = bytearray(image)
        img[lo + bit // 8] ^= 1 << (bit % 8)
        yield f"bit {bit} flipped", img
    img = bytearray(image)
    img[lo:lo + BS] = bytes(BS)
    yield "zeroed", img
    if donor is not None:
        img = bytearray(image)
        img[lo:lo + BS] = image[donor * BS:(donor + 1) * BS]
        yield f"overwritten by block {donor}", img


def names_block(text: str, block: int) -> bool:
    return f"block {block}:" in text or f"slot {block}:" in text


def wrong_mappings(store: Store, p: Populated, commit_blocks: set[int]) -> list[str]:
    """Mappings that return data other than the model's (CorruptionError is fine)."""
    bad = []
    visible = {e.name: e for e in store.snaps.visible()}
    for name, want in p.snaps.items():
        entry = visible.get(name)
        if entry is None:
            bad.append(f"snapshot {name} vanished")
            continue
        for chunk in range(ORIGIN_CHUNKS):
            try:
                sc = store.snapshot_lookup(entry.slot, chunk)
            except CorruptionError:
                continue
            dev = store.origin if sc is None else store.dev
            got = dev.pread((chunk if sc is None else sc) * CS, CS)
            if got != want[chunk]:
                bad.append(f"snapshot {name} chunk {chunk} maps to wrong data")
                break
    for name in visible:
        if name not in p.snaps:
            bad.append(f"unknown snapshot {name} appeared")
    return bad


def verdict(img: bytearray, p: Populated, block: int,
            names: set[int]) -> tuple[bool, list[str], str]:
    """(detected, wrong mappings, how) for one damaged image."""
    try:
        store = open_image(img, p.origin)
    except (CorruptionError, FormatError) as exc:
        return any(names_block(str(exc), b) for b in names), [], f"open refused: {exc}"
    except StoreError as exc:
        return False, [], f"open failed oddly: {type(exc).__name__}: {exc}"
    report = check_store(store)
    hits = [q for q in report.problems
            if q.block in names or any(names_block(q.message, b) for b in names)]
    errors = [q for q in report.problems if q.severity == "error"]
    how = f"checker: {hits[0].message if hits else report.problems[:1]}"
    bad = wrong_mappings(store, p, set())
    detected = bool(hits) and (bool(errors) or block in (0, 1))
    return detected, bad, how


def journal_verdict(img: bytearray, p: Populated, block: int) -> tuple[bool, list[str], str]:
    """(mended and reported, wrong mappings, how) for one damaged journal block."""
    try:
        store = open_image(img, p.origin)
    except StoreError as exc:
        return False, [], f"open failed: {type(exc).__name__}: {exc}"
    start = store.sb.journal_start
    notes = [n for n in store.recovery.journal_notes if f"at journal block {block - start} " in n]
    report = check_store(store)
    bad = wrong_mappings(store, p, set())
    ok = bool(notes) and report.clean and store.recovery.transactions == p.pending
    return ok, bad, f"notes {store.recovery.journal_notes}, problems {report.problems[:2]}"


def _donor(kind_targets: dict[str, list[int]], area: str, block: int) -> int | None:
    """Another block of the same kind, to copy over ``block`` (a misdirected write)."""
    if area.startswith("superblock"):
        return 1 - block
    same = [b for b in kind_targets[area] if b != block]
    return same[0] if same else None


def test_every_metadata_corruption_is_detected(show_figure):
    rng = random.Random(2024)
    clean = build(pending_txns=0)
    pending = build(pending_txns=3)
    # The undamaged stores are clean and hold the model.
    for p in (clean, pending):
        store = open_image(p.image, p.origin)
        assert check_store(store).clean
        assert wrong_mappings(store, p, set()) == []
    plan = [(clean, targets(clean)), (pending, journal_targets(pending))]
    injected = detected = 0
    failures, per_area = [], {}
    for p, areas in plan:
        for area, blocks in areas.items():
            for block in blocks:
                for label, img in damages(p.image, block, rng, _donor(areas, area, block)):
                    injected += 1
                    if area.startswith("journal"):
                        ok, bad, how = journal_verdict(img, p, block)
                    else:
                        ok, bad, how = verdict(img, p, block, {block})
                    per_area[area] = per_area.get(area, 0) + 1
                    if ok and not bad:
                        detected += 1
                    else:
                        failures.append(f"{area} block {block} {label}: detected={ok} "
                                        f"wrong={bad[:2]} ({how})")
    # Both superblock slots at once: the store is unreadable and says why.
    for label in ("zeroed", "bit flipped"):
        img = bytearray(clean.image)
        for slot in (0, 1):
            if label == "zeroed":
                img[slot * BS:(slot + 1) * BS] = bytes(BS)
            else:
                img[slot * BS + 100] ^= 4
        injected += 1
        per_area["superblock (both slots)"] = per_area.get("superblock (both slots)", 0) + 1
        with pytest.raises(FormatError) as info:
            open_image(img, clean.origin)
        if "slot 0" in str(info.value) and "slot 1" in str(info.value):
            detected += 1
        else:
            failures.append(f"both superblocks {label}: {info.value}")
    figure = (f"corruptions injected: {injected}, detected: {detected} "
              f"({', '.join(f'{k} {v}' for k, v in per_area.items())}); "
              f"wrong mappings served: {sum('wrong=[]' not in f for f in failures)}")
    show_figure(figure)
    assert injected >= 100
    assert not failures, "\n".join(failures[:20])
    assert detected == injected


def test_damage_is_reported_with_its_block_and_path():
    p = build()
    leaf = targets(p)["b-tree leaf"][1]
    img = bytearray(p.image)
    img[leaf * BS + 200] ^= 0x10
    store = open_image(img, p.origin)
    report = check_store(store)
    first = next(q for q in report.problems if q.severity == "error")
    assert first.block == leaf and "checksum mismatch" in first.message
    assert first.path.startswith("root/")
    assert not report.repairable
    # Lookups through the damaged leaf raise; they never guess.
    slot = store.snaps.find("alpha").slot
    raised = 0
    for chunk in range(ORIGIN_CHUNKS):
        try:
            store.snapshot_lookup(slot, chunk)
        except CorruptionError as exc:
            assert exc.block == leaf
            raised += 1
    assert raised > 0


def test_damaged_newest_superblock_falls_back_and_is_rewritten():
    p = build()
    newest = targets(p)["superblock (newest slot)"][0]
    img = bytearray(p.image)
    img[newest * BS + 64] ^= 1
    dev = ImageDevice(img)
    odev = MemoryDevice(len(p.origin))
    odev.data[:] = p.origin
    store = Store.open(dev, odev)  # a writer heals the slot
    assert any(f"slot {newest}:" in n for n in store.recovery.notes)
    assert wrong_mappings(store, p, set()) == []
    store.close()
    again = open_image(dev.data, p.origin)
    assert again.recovery.notes == [] and check_store(again).clean
    assert wrong_mappings(again, p, set()) == []


def test_damage_in_the_last_transaction_is_mended():
    """Once the documented limit: a flip in the newest transaction rolled it back."""
    p = build(pending_txns=2)
    f, scan = pending_scan(p)
    last = scan.transactions[-1]
    img = bytearray(p.image)
    img[(f.journal_start + last.position) * BS + 40] ^= 1
    store = open_image(img, p.origin)
    assert store.recovery.transactions == 2
    report = check_store(store)
    assert report.clean and report.journal == store.recovery.journal_notes
    assert report.journal == [f"journal transaction {last.seq} at journal block {last.position}: "
                              f"leading commit record at journal block {last.position} damaged; "
                              "the trailing copy was used"]
    names = {e.name for e in store.snaps.visible()}
    assert {"late0", "late1"} <= names
    assert wrong_mappings(store, p, set()) == []


# ---------------------------------------------------------------------------
# the reported failure: a SIGKILLed store, one bit flipped in its newest
# transaction, which held the copy-outs of origin chunks the clients had
# already overwritten


def _killed_with_copyouts(seed: int) -> tuple[bytes, bytes, dict[str, list[bytes]], list[int]]:
    """(store image, origin image, what each snapshot must read, newest txn blocks)."""
    rng = random.Random(seed)
    dev, origin_dev = MemoryDevice(STORE_BYTES), MemoryDevice(ORIGIN_CHUNKS * CS)
    create.create(dev, origin_dev.size, chunk_size=CS, block_size=BS, journal_bytes=128 * BS,
                  max_snapshots=8)
    origin = [rng.randbytes(CS) for _ in range(ORIGIN_CHUNKS)]
    origin_dev.pwrite(0, b"".join(origin))
    store = Store.open(dev, origin_dev)
    snaps: dict[str, list[bytes]] = {}
    for name in ("s1", "s2", "s3", "s4"):
        store.create_snapshot(name)
        store.commit()
        snaps[name] = list(origin)
    head = store.journal.head
    chunks = rng.sample(range(ORIGIN_CHUNKS), 4)
    for c in chunks:  # one transaction: the copy-outs every snapshot needs
        store.origin_write([(c, 1)])
    store.commit()
    j = store.journal
    newest = [j.start + (head + i) % j.nblocks for i in range((j.head - head) % j.nblocks)]
    for c in chunks:  # acknowledged: the clients overwrite the origin
        origin[c] = rng.randbytes(CS)
        origin_dev.pwrite(c * CS, origin[c])
    return bytes(dev.data), bytes(origin_dev.data), snaps, newest  # no close: SIGKILL


def test_bit_flip_in_the_newest_transaction_of_a_killed_store(show_figure):
    damaged = corrected = dropped_acked = 0
    failures = []
    for trial in range(50):
        image, origin, snaps, newest = _killed_with_copyouts(trial)
        rng = random.Random(1000 + trial)
        block, bit = rng.choice(newest), rng.randrange(BS * 8)
        img = bytearray(image)
        img[block * BS + bit // 8] ^= 1 << (bit % 8)
        damaged += 1
        p = Populated(bytes(img), origin, snaps, len(snaps))
        store = open_image(img, origin, readonly=False)  # what csnapd does at start
        bad = wrong_mappings(store, p, set())
        report = check_store(store)
        if bad or store.recovery.journal_dropped:
            dropped_acked += 1
        if store.recovery.journal_corrected == 1 and not bad and report.clean:
            corrected += 1
        else:
            failures.append(f"trial {trial}: block {block} bit {bit}: wrong={bad[:2]} "
                            f"notes={store.recovery.journal_notes} problems={report.problems[:2]}")
    show_figure(f"journal blocks damaged: {damaged}, corrected: {corrected}, "
                f"dropped acknowledged: {dropped_acked}")
    assert not failures, "\n".join(failures[:10])


# ---------------------------------------------------------------------------
# the csnap-check command on file-backed stores


def _tool(name: str, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / name
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", f"tools.{name.replace('-', '_')}"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])


def _csnap_check(*args: str) -> subprocess.CompletedProcess:
    return _tool("csnap-check", "--quiet", *args)


@pytest.fixture
def store_file(tmp_path):
    """A populated, cleanly closed file-backed store; yields (path, Populated)."""
    path = tmp_path / "store.img"
    with open(path, "wb") as fh:
        fh.truncate(STORE_BYTES)
    dev = FileDevice(str(path))
    origin = MemoryDevice(ORIGIN_CHUNKS * CS)
    create.create(dev, origin.size, chunk_size=CS, block_size=BS, journal_bytes=128 * BS,
                  max_snapshots=8)
    snaps = _populate(7, dev, origin, 0)
    dev.close()
    p = Populated(path.read_bytes(), bytes(origin.data), snaps, 0)
    return path, p


def test_cli_clean_store_exits_0_and_leaves_it_byte_identical(store_file):
    path, p = store_file
    result = _csnap_check("--store", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("clean")
    assert path.read_bytes() == p.image


def test_cli_damaged_leaf_exits_1_naming_the_block(store_file):
    path, p = store_file
    leaf = targets(p)["b-tree leaf"][0]
    with open(path, "r+b") as fh:
        fh.seek(leaf * BS + 77)
        byte = fh.read(1)
        fh.seek(leaf * BS + 77)
        fh.write(bytes([byte[0] ^ 0x80]))
    damaged = path.read_bytes()
    result = _csnap_check("--store", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"corrupt LEAF block {leaf}: checksum mismatch" in result.stdout
    assert path.read_bytes() == damaged  # checking never writes
    # --repair refuses to guess about damaged mappings
    result = _csnap_check("--store", str(path), "--repair")
    assert result.returncode == 1
    assert "not repaired" in result.stdout
    assert f"block {leaf}" in _csnap_check("--store", str(path)).stdout


@pytest.mark.parametrize("area", ["snapshot table", "both superblocks", "journal commit"])
def test_cli_unreadable_store_exits_2_naming_the_block(tmp_path, store_file, area):
    path, p = store_file
    img = bytearray(p.image)
    if area == "snapshot table":
        block = targets(p)["snapshot table"][0]
        img[block * BS:(block + 1) * BS] = bytes(BS)
        expect = f"SNAPTAB block {block}"
    elif area == "both superblocks":
        img[0:2 * BS] = bytes(2 * BS)
        expect = "superblock slot 0"
    else:
        q = build(pending_txns=3)
        img = bytearray(q.image)
        block = journal_targets(q)["journal leading commit record"][0]
        trailing = journal_targets(q)["journal trailing commit record"][0]
        img[block * BS + 50] ^= 2
        img[trailing * BS + 50] ^= 2  # both copies: the transaction cannot be recovered
        expect = f"COMMIT3 block {block}: journal damaged"
    path.write_bytes(bytes(img))
    result = _csnap_check("--store", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert expect in result.stderr
    assert result.stderr.startswith("csnap-check: cannot read store")


def _leak(path: Path, p: Populated, free_delta: int = 0) -> tuple[int, int]:
    dev = FileDevice(str(path))
    origin = MemoryDevice(len(p.origin))
    origin.data[:] = p.origin
    store = Store.open(dev, origin)
    chunk = store.alloc.alloc_chunk()
    block = store.alloc.alloc_block()
    store.sb.free_chunks += free_delta
    store.sbs.touch()
    store.commit()
    store.close()
    return chunk, block


def test_cli_repairs_leaks_and_says_what_it_did(store_file):
    path, p = store_file
    chunk, block = _leak(path, p)
    result = _csnap_check("--store", str(path))
    assert result.returncode == 1
    assert f"leak: store chunk {chunk} is allocated but unused" in result.stdout
    assert f"leak: metadata block {block} is marked but not in the tree" in result.stdout
    result = _csnap_check("--store", str(path), "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"repair: freed leaked chunk {chunk}" in result.stdout
    assert f"repair: freed leaked metadata block {block}" in result.stdout
    assert _csnap_check("--store", str(path)).returncode == 0
    store = open_image(path.read_bytes(), p.origin)
    assert wrong_mappings(store, p, set()) == []


def test_cli_repairs_a_wrong_free_count(store_file):
    path, p = store_file
    _leak(path, p, free_delta=3)
    result = _csnap_check("--store", str(path))
    assert result.returncode == 1
    assert "count: free chunk count is" in result.stdout
    result = _csnap_check("--store", str(path), "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "repair: free chunk count" in result.stdout
    assert _csnap_check("--store", str(path)).returncode == 0


def test_cli_json_reports_unreadable(store_file):
    path, p = store_file
    img = bytearray(p.image)
    img[0:2 * BS] = os.urandom(2 * BS)
    path.write_bytes(bytes(img))
    result = _csnap_check("--store", str(path), "--json")
    assert result.returncode == 2
    assert '"status": "unreadable"' in result.stdout


def test_cli_damaged_bitmap_is_reported_not_fatal(store_file):
    """A damaged bitmap block is listed (exit 1) and the rest of the store still checked."""
    path, p = store_file
    block = targets(p)["chunk bitmap"][0]
    img = bytearray(p.image)
    img[block * BS + 300] ^= 0x01
    path.write_bytes(bytes(img))
    result = _csnap_check("--store", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"corrupt CBITMAP block {block}: checksum mismatch" in result.stdout
    assert result.stdout.count(f"CBITMAP block {block}") == 1  # reported once


def test_cli_lists_a_mended_journal_block_and_dump_shows_it(tmp_path):
    """A crashed store with a flipped image in its newest transaction: csnap-check says
    what it rebuilt (exit 0, file untouched), csnap-dump shows the block statuses, and
    --repair makes it permanent."""
    q = build(pending_txns=2)
    f, scan = pending_scan(q)
    last = scan.transactions[-1]
    at = (last.position + 1) % f.journal_blocks
    img = bytearray(q.image)
    img[(f.journal_start + at) * BS + 123] ^= 8
    path = tmp_path / "store.img"
    path.write_bytes(bytes(img))
    result = _csnap_check("--store", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    home = last.images[0][0]
    assert (f"journal: journal transaction {last.seq} at journal block {last.position}: image 0 "
            f"(home block {home}) at journal block {at} rebuilt from parity") in result.stdout
    verdict = result.stdout.splitlines()[-1]
    assert verdict.startswith("clean (not shut down cleanly, so 2 journal transaction(s) were "
                              "replayed in memory only: ")
    assert "; journal recovery: 1 damaged block(s) mended, 0 torn transaction(s) dropped, " \
           "in memory only" in verdict
    assert path.read_bytes() == bytes(img)  # read-only: mended in memory only
    dump = _tool("csnap-dump", "--store", str(path), "journal", "--json")
    assert dump.returncode == 0, dump.stderr
    journal = json.loads(dump.stdout)
    assert journal["format"] == "compact" and journal["epochs"] == [0]
    newest = journal["pending_transactions"][-1]
    assert newest["seq"] == last.seq and newest["blocks"] == len(last.images) + 3
    assert (newest["leading"], newest["parity"], newest["trailing"]) == ("ok", "ok", "ok")
    assert newest["images"][0] == {"home": home, "crc": f"0x{last.record.crcs[0]:08x}",
                                   "status": "rebuilt from parity"}
    assert all(i["status"] == "ok" for i in newest["images"][1:])
    human = _tool("csnap-dump", "--store", str(path), "journal")
    assert "rebuilt from parity" in human.stdout
    repaired = _csnap_check("--store", str(path), "--repair")
    assert repaired.returncode == 0 and "rebuilt from parity" in repaired.stdout
    after = _csnap_check("--store", str(path))
    assert after.returncode == 0 and "journal" not in after.stdout
    assert wrong_mappings(open_image(path.read_bytes(), q.origin), q, set()) == []


def test_cli_reports_a_dropped_torn_transaction(tmp_path):
    q = build(pending_txns=2)
    f, scan = pending_scan(q)
    last = scan.transactions[-1]
    img = bytearray(q.image)
    for offset in (1, 2):  # two images: a torn write, cannot be mended
        block = f.journal_start + (last.position + offset) % f.journal_blocks
        img[block * BS + 99] ^= 1
    path = tmp_path / "store.img"
    path.write_bytes(bytes(img))
    result = _csnap_check("--store", str(path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "clean"
    assert report["journal"] == [f"torn transaction {last.seq} at journal block "
                                 f"{last.position} dropped: never acknowledged"]
    assert report["stats"]["journal_dropped"] == 1
