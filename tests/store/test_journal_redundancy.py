"""Redundant journal transactions: any single damaged block is mended and reported.

Five compact transactions are committed and never checkpointed (the store is
dropped, as a SIGKILL would leave it): images only (t1..t3), records held in
the commit record alone (t4: two blocks, no parity), and images plus records
that spill into record blocks (t5).  The newest ones hold the copy-outs of
origin chunks that the "client" then overwrote, so losing one would make the
snapshots read data written after them: exactly the reported failure.  Every
block of the newest transaction, of the records-only one and of a middle one is
damaged in turn (a flipped bit, zeros, the block that was there in the previous
lap) and the store must replay it with the right content and say what it
mended.  Two damaged blocks in the newest transaction make it a torn write
(dropped and reported); two in a middle one, with a valid transaction after it,
refuse the open.  The envelope of the older redundant format (COMMIT2) is
tested on its own at the end.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from csnapd.store import format as fmt
from csnapd.store import journal as jnl
from csnapd.store import txn
from csnapd.store.device import MemoryDevice
from csnapd.store.errors import CorruptionError
from csnapd.store.store import Store

from .conftest import BS, CS, audit, chunk_bytes, fill_origin, make_store, snapshot_read


@dataclass
class Crashed:
    image: bytes  # the store device after the crash
    before: bytes  # the store device before the four transactions (older-lap blocks)
    origin: MemoryDevice
    data: dict[int, bytes]  # original origin contents
    txns: list[list[int]]  # absolute journal blocks of t1..t4, the spread ones, t5
    start: int  # journal_start
    ntxn: int  # transactions in the journal (the spread write took several)


def _txn_blocks(s: Store, fn) -> list[int]:  # noqa: ANN001
    j, before, cps = s.journal, s.journal.head, s.stats["checkpoints"]
    fn()
    s.commit()
    assert s.stats["checkpoints"] == cps, "the transaction must follow the last checkpoint"
    n = (j.head - before) % j.nblocks
    return [j.start + (before + i) % j.nblocks for i in range(n)]


@pytest.fixture(scope="module")
def crashed() -> Crashed:
    dev, origin = make_store(journal_blocks=128, origin_chunks=1024, store_bytes=8 << 20)
    data = fill_origin(origin)
    s = Store.open(dev, origin)
    # Go round the journal a few times so the blocks ahead of the head belong
    # to older laps (valid-looking records and images with lower sequences).
    i = 0
    while s.journal.seq < 100:
        s.create_snapshot(f"lap{i}")
        s.commit()
        s.delete_snapshot(f"lap{i}")
        s.commit()
        while s.delete_step():
            pass
        s.commit()
        i += 1
    s._checkpoint()
    before = bytes(dev.data)

    def owrite(lo: int, hi: int) -> None:
        s.origin_write([(lo, hi - lo)])

    t1 = _txn_blocks(s, lambda: s.create_snapshot("one"))
    t2 = _txn_blocks(s, lambda: owrite(0, 8))
    for c in range(8):  # the client writes only after the commit returned
        origin.pwrite(c * CS, chunk_bytes(c, 1))
    t3 = _txn_blocks(s, lambda: s.create_snapshot("two"))
    t4 = _txn_blocks(s, lambda: owrite(8, 12))
    for c in range(8, 12):
        origin.pwrite(c * CS, chunk_bytes(c, 1))

    # many leaves (imaged, over several transactions), then a new entry in some
    # of them: their records spill over into a record block; and a new grant block
    spread = _txn_blocks(s, lambda: s.origin_write([(c, 1) for c in range(100, 900, 2)]))

    def spill() -> None:
        s.origin_write([(c, 1) for c in range(101, 900, 50)])
        s.grants.add_origin(7, [(0, 64)])

    t5 = _txn_blocks(s, spill)
    assert len(t2) >= 5 and len(t4) == 2 and len(t5) >= 5
    scan = jnl.scan(dev, s.sb.journal_start, s.journal.nblocks, BS, s.sb.store_id,
                    s.journal.tail, s.journal.tail_seq)
    last = scan.transactions[-1].record
    assert last.span == len(t5) and last.homes, "t5 is one transaction with an image"
    assert last.payload_blocks > len(last.homes), "t5 spills into a record block"
    # dropped without close(): committed, never checkpointed
    return Crashed(bytes(dev.data), before, origin, data, [t1, t2, t3, t4, spread, t5],
                   s.sb.journal_start, len(scan.transactions))


def expected_view(c: Crashed) -> dict[str, dict[int, bytes]]:
    one = {ch: c.data[ch] for ch in range(16)}
    two = {ch: chunk_bytes(ch, 1) if ch < 8 else c.data[ch] for ch in range(16)}
    return {"one": one, "two": two}


def open_damaged(c: Crashed, damage: dict[int, bytes]) -> Store:
    dev = MemoryDevice(len(c.image))
    dev.data[:] = c.image
    for block, raw in damage.items():
        dev.pwrite(block * BS, raw)
    return Store.open(dev, c.origin)


def assert_content(s: Store, c: Crashed) -> None:
    assert sorted(e.name for e in s.snaps.visible()) == ["one", "two"]
    for name, chunks in expected_view(c).items():
        slot = s.snaps.find(name).slot
        for ch, want in chunks.items():
            assert snapshot_read(s, slot, ch) == want, (name, ch)


def images_in(c: Crashed, blocks: list[int]) -> dict[int, int]:
    """home -> journal block of its image, for the transactions starting in ``blocks``."""
    dev = MemoryDevice(len(c.image))
    dev.data[:] = c.image
    f = Store.open(dev, c.origin, readonly=True).sb
    scan = jnl.scan(dev, f.journal_start, f.journal_blocks, BS, f.store_id, f.journal_tail,
                    f.journal_seq)
    out = {}
    for t in scan.transactions:
        if c.start + t.position in blocks:
            for i, home in enumerate(t.record.homes):
                out[home] = c.start + (t.position + 1 + i) % f.journal_blocks
    return out


def block_of(c: Crashed, block: int) -> bytes:
    return c.image[block * BS:(block + 1) * BS]


def flipped(raw: bytes, rng: random.Random) -> bytes:
    bit = rng.randrange(len(raw) * 8)
    out = bytearray(raw)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def variants(c: Crashed, block: int, rng: random.Random) -> list[tuple[str, bytes]]:
    stale = c.before[block * BS:(block + 1) * BS]
    assert stale != block_of(c, block) and any(stale), "the previous lap left a block here"
    return [("bit flip", flipped(block_of(c, block), rng)), ("zeroed", bytes(BS)),
            ("stale block of the previous lap", stale)]


def test_the_undamaged_crash_replays_everything(crashed):
    s = open_damaged(crashed, {})
    assert s.recovery.transactions == crashed.ntxn and s.recovery.records > 0
    assert s.recovery.journal_notes == [] and s.recovery.journal_corrected == 0
    assert_content(s, crashed)
    audit(s)


@pytest.mark.parametrize("which", ["newest", "records only", "middle"])
def test_any_single_damaged_block_is_mended_and_reported(crashed, which):
    c = crashed
    blocks = c.txns[{"newest": 5, "records only": 3, "middle": 1}[which]]
    rng = random.Random(len(blocks))
    tried = 0
    for offset, block in enumerate(blocks):
        for label, raw in variants(c, block, rng):
            s = open_damaged(c, {block: raw})
            where = f"{which} transaction, block {offset} of {len(blocks)}, {label}"
            assert s.recovery.transactions == c.ntxn, where
            assert s.recovery.journal_corrected == 1, where
            assert s.recovery.journal_dropped == 0, where
            (note,) = s.recovery.journal_notes
            assert f"at journal block {block - c.start} " in note, (where, note)
            if 0 < offset < len(blocks) - 2:
                assert note.endswith("rebuilt from parity"), note
            assert_content(s, c)
            audit(s)
            # the open wrote everything home and emptied the journal: a second
            # crash right now replays nothing and reports nothing
            again = Store.open(s.dev, c.origin)
            assert again.recovery.transactions == 0 and again.recovery.journal_notes == []
            assert_content(again, c)
            tried += 1
    assert tried == 3 * len(blocks)


def test_a_valid_older_image_of_the_same_home_is_not_accepted(crashed):
    """The per-image CRC, not the image's own checksum, decides."""
    c = crashed
    homes2, homes5 = images_in(c, c.txns[1]), images_in(c, c.txns[4])  # t2, the spread ones
    home = min(set(homes2) & set(homes5))  # imaged in both (a leaf's shape changed)
    raw = block_of(c, homes2[home])
    kind = fmt.BlockKind(fmt.peek_header(raw).kind)
    fmt.verify(raw, kind, home, None)  # a perfectly valid block, just stale
    s = open_damaged(c, {homes5[home]: raw})
    (note,) = s.recovery.journal_notes
    assert f"(home block {home})" in note and note.endswith("rebuilt from parity")
    assert_content(s, c)
    audit(s)


def test_leading_record_and_an_image_both_damaged_are_still_mended(crashed):
    c = crashed
    t2 = c.txns[1]
    s = open_damaged(c, {t2[0]: bytes(BS), t2[1]: bytes(BS)})
    assert s.recovery.transactions == c.ntxn and s.recovery.journal_corrected == 2
    assert_content(s, c)
    audit(s)


FATAL_PAIRS = {"two payload blocks": (1, 2), "payload block and parity": (1, -2),
               "both commit records": (0, -1)}


@pytest.mark.parametrize("pair", sorted(FATAL_PAIRS))
def test_two_damaged_blocks_in_the_newest_transaction_are_a_torn_tail(crashed, pair):
    """Dropped and reported: only safe because acks follow the flush (journal.py 6)."""
    c = crashed
    t5 = c.txns[5]
    damage = {t5[i]: flipped(block_of(c, t5[i]), random.Random(i)) for i in FATAL_PAIRS[pair]}
    s = open_damaged(c, damage)
    assert s.recovery.transactions == c.ntxn - 1
    assert s.recovery.journal_dropped == 1
    pos = t5[0] - c.start
    assert s.recovery.journal_notes == [
        f"torn transaction {s.journal.seq} at journal block {pos} dropped: never acknowledged"]
    assert sorted(e.name for e in s.snaps.visible()) == ["one", "two"]
    audit(s)


def test_both_commit_records_wiped_look_like_the_end_of_the_journal(crashed):
    """With no trace of either record there is nothing to report: the documented limit."""
    c = crashed
    t5 = c.txns[5]
    s = open_damaged(c, {t5[0]: bytes(BS), t5[-1]: bytes(BS)})
    assert s.recovery.transactions == c.ntxn - 1 and s.recovery.journal_dropped == 0
    audit(s)


@pytest.mark.parametrize("pair", sorted(FATAL_PAIRS))
def test_two_damaged_blocks_before_a_valid_transaction_refuse_the_open(crashed, pair):
    c = crashed
    t2 = c.txns[1]
    damage = {t2[i]: flipped(block_of(c, t2[i]), random.Random(i)) for i in FATAL_PAIRS[pair]}
    with pytest.raises(CorruptionError, match="journal damaged") as info:
        open_damaged(c, damage)
    assert info.value.block == t2[0]
    assert f"at journal block {t2[0] - c.start} cannot be recovered" in str(info.value)


def test_epoch_is_written_and_reported():
    dev, origin = make_store()
    fill_origin(origin)
    s = Store.open(dev, origin)
    s.create_snapshot("a")
    s.commit()
    s.journal.epoch = 7
    s.create_snapshot("b")
    s.commit()
    again = Store.open(dev, origin)  # crash: no close
    assert again.recovery.epochs == [0, 7]
    f = s.sb
    scan = jnl.scan(dev, f.journal_start, f.journal_blocks, BS, f.store_id, again.journal.tail,
                    again.journal.tail_seq)
    assert scan.transactions == []  # the open checkpointed


# ---------------------------------------------------------------------------
# one transaction on its own: every single fault, every place in the ring


@pytest.mark.parametrize("n", [0, 1, 3, 8])
def test_mend_repairs_every_single_fault_even_across_the_wrap(n):
    nblocks, start, sid = 32, 10, 0xABC
    rng = random.Random(n)
    images = [(100 + i, fmt.seal(fmt.BlockKind.LEAF, 100 + i, sid, 0, rng.randbytes(64), BS))
              for i in range(n)]
    for pos in (0, nblocks - 2):  # a plain run, and one that wraps
        blocks = txn.encode(start, nblocks, pos, sid, 5, 3, images, BS)
        assert len(blocks) == n + txn.OVERHEAD
        lead = fmt.decode_commit2(blocks[0], start + pos, sid)
        trail = fmt.decode_commit2(blocks[-1], start + (pos + n + 2) % nblocks, sid)
        assert lead == trail and lead.epoch == 3 and lead.first == pos
        assert txn.mend(lead, blocks, start, nblocks, sid).damaged == []
        for k in range(len(blocks)):
            bad = list(blocks)
            bad[k] = flipped(bad[k], rng)
            rec = trail if k == 0 else lead
            got = txn.mend(rec, bad, start, nblocks, sid)
            assert got is not None and got.damaged == [k]
            assert got.images == [image for _, image in images]
        if n >= 2:
            bad = list(blocks)
            bad[1], bad[2] = bytes(BS), bytes(BS)
            assert txn.mend(lead, bad, start, nblocks, sid) is None


@pytest.mark.parametrize("shape", [(0, 0), (0, 300), (0, 2000), (2, 0), (3, 700), (5, 4000)])
def test_compact_transactions_mend_every_single_fault_even_across_the_wrap(shape):
    nimg, nbytes = shape
    nblocks, start, sid = 48, 10, 0xABC
    rng = random.Random(nimg * 7 + nbytes)
    images = [(100 + i, fmt.seal(fmt.BlockKind.LEAF, 100 + i, sid, 0, rng.randbytes(64), BS))
              for i in range(nimg)]
    stream = rng.randbytes(nbytes)
    for pos in (0, nblocks - 2):  # a plain run, and one that wraps
        blocks = txn.encode3(start, nblocks, pos, sid, 5, 3, images, stream, BS)
        assert len(blocks) == txn.span3(nimg, nbytes, BS)
        assert len(blocks) == 2 if nimg == 0 and nbytes <= 400 else len(blocks) > 3
        lead = fmt.decode_commit3(blocks[0], start + pos, sid)
        trail = fmt.decode_commit3(blocks[-1], start + (pos + len(blocks) - 1) % nblocks, sid)
        assert lead == trail and lead.epoch == 3 and lead.first == pos
        whole = txn.mend(lead, blocks, start, nblocks, sid)
        assert whole.damaged == [] and whole.stream() == stream
        for k in range(len(blocks)):
            bad = list(blocks)
            bad[k] = flipped(bad[k], rng)
            rec = trail if k == 0 else lead
            got = txn.mend(rec, bad, start, nblocks, sid)
            assert got is not None and got.damaged == [k]
            assert got.images[:nimg] == [image for _, image in images]
            assert got.stream() == stream
        if rec.payload_blocks >= 2:
            bad = list(blocks)
            bad[1], bad[2] = bytes(BS), bytes(BS)
            assert txn.mend(lead, bad, start, nblocks, sid) is None


def test_max_images_leaves_room_for_the_redundancy():
    for nblocks in (128, 129, 1000, 4096):
        for bs in (512, 4096, 1 << 20):
            m = jnl.max_images(nblocks, bs, jnl.REDUNDANT)
            assert m <= fmt.commit2_capacity(bs)
            assert m + txn.OVERHEAD <= nblocks // 2  # always fits after a checkpoint
            c = jnl.max_images(nblocks, bs)  # compact: images plus records of <= bs/4 each
            worst = max(txn.span3(c - k, k * (bs // 4) + 200, bs) for k in range(c + 1))
            assert worst <= nblocks // 2
    assert jnl.max_images(128, 512, jnl.REDUNDANT) == 37
    assert jnl.max_images(2048, 4096, jnl.REDUNDANT) == 336
