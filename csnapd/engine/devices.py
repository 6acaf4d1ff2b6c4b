"""Device verification, server side: what a client must check, and checking its answer.

Why: clients do the data I/O on the shared devices themselves. A client given the wrong
device (a mislabelled LUN, a file of another csnap setup) would read someone else's bytes
and write into them. The client library never imports csnapd and cannot parse the store
format, so the server tells it what to look for, in ``IDENTIFY_OK.devices``:

* ``store``: the store UUID at its offset in each superblock slot (a match in either
  slot passes: one slot may be torn), and ``store_bytes``, the store device's size. The
  client checks these itself.
* ``origin``: a few sample ranges of the origin. The client sends back their CRC32C in
  VERIFY_DEVICES; the server reads the same ranges from its own origin *then* and
  compares. Samples prefer ranges that are not all zeros (a zero range tells a wrong
  device from the right one only if the wrong one has data there), plus the first and
  last range, which a wrong device of the same size most often differs in.

The origin changes under live writes, so a sample counts as matching if the client's
checksum equals the server's when it chose the sample *or* when it checks it (one write
in between cannot cause a mismatch), and a round with a mismatch is retried with fresh
samples (``VERIFY_AGAIN``) up to ``MAX_ROUNDS`` rounds before ``WRONG_DEVICE``. A wrong
device differs in every round. Limit: where the server's origin reads as zeros, only
the size and zeros can be compared.

Everything here runs on the store thread (the engine's), like every other device read.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import crc32c

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnapd.store import format as fmt
from csnapd.store.device import Device
from csnapd.store.store import Store

log = logging.getLogger("csnapd.engine")

SAMPLE_BYTES = 4096  # bytes per origin sample range
SAMPLES = 8  # sample ranges per round: first, last, and the others (non-zero preferred)
PROBES = 32  # random ranges read per round while looking for non-zero ones
MAX_ROUNDS = 4  # rounds with a mismatch before the origin is refused


def checksum(data: bytes) -> int:
    """CRC32C of one sample range, as the client computes it (docs/protocol.md)."""
    return crc32c.crc32c(data)


def store_marks(store: Store) -> list[list[Any]]:
    """``[[offset, uuid], ...]``: where each superblock slot of the store holds its UUID."""
    bs, uuid = store.block_size, store.sb.uuid
    return [[slot * bs + fmt.SUPER_UUID_OFFSET, uuid] for slot in (0, 1)]


@dataclass(slots=True)
class _Round:
    """One connection's outstanding samples: (offset, length, CRC when chosen)."""

    samples: list[tuple[int, int, int]]
    rounds: int = 0


class DeviceVerifier:
    """Chooses each connection's samples (``offer``) and checks its answer (``verify``)."""

    def __init__(self, store: Store, rng: random.Random | None = None) -> None:
        self.store = store
        self.rng = rng or random.Random(os.urandom(16))
        self._rounds: dict[int, _Round] = {}

    def offer(self, conn_id: int) -> dict[str, Any]:
        """The ``devices`` map of IDENTIFY_OK for a newly identified connection."""
        try:
            samples = self._choose()
        except OSError as exc:
            log.error("cannot read the origin to choose device samples: %s", exc)
            samples = []
        if samples:
            self._rounds[conn_id] = _Round(samples)
        else:
            self._rounds.pop(conn_id, None)
        return m.devices_info(store_marks(self.store), self.store.dev.size,
                              [[off, n] for off, n, _ in samples])

    def forget(self, conn_id: int) -> None:
        """The connection closed: drop its outstanding samples."""
        self._rounds.pop(conn_id, None)

    def verify(self, conn_id: int, rid: int, crcs: list[int]) -> dict[str, Any]:
        """The reply to VERIFY_DEVICES: VERIFY_OK, VERIFY_AGAIN or ERROR."""
        r = self._rounds.get(conn_id)
        if r is None:
            return m.reply_error(rid, ErrorCode.BAD_REQUEST,
                                 "no origin samples outstanding on this connection: "
                                 "VERIFY_DEVICES answers IDENTIFY_OK.devices.origin or "
                                 "VERIFY_AGAIN, once")
        if len(crcs) != len(r.samples):
            return m.reply_error(rid, ErrorCode.BAD_REQUEST,
                                 f"VERIFY_DEVICES: {len(crcs)} checksums for "
                                 f"{len(r.samples)} samples")
        try:
            differ = sum(1 for (off, n, before), crc in zip(r.samples, crcs, strict=True)
                         if crc != before and crc != checksum(self._read(off, n)))
        except OSError as exc:
            log.error("cannot read the origin to verify a client's device: %s", exc)
            return m.reply_error(rid, ErrorCode.INTERNAL, f"cannot read the origin: {exc}")
        total = len(r.samples)
        if not differ:
            del self._rounds[conn_id]
            return m.verify_ok(rid)
        r.rounds += 1
        if r.rounds >= MAX_ROUNDS:
            del self._rounds[conn_id]
            log.warning("connection %d: refused its origin device: %d of %d sampled chunks "
                        "differ (%d rounds)", conn_id, differ, total, r.rounds)
            return m.reply_error(rid, ErrorCode.WRONG_DEVICE,
                                 f"origin: {differ} of {total} sampled chunks differ "
                                 f"({r.rounds} rounds)")
        log.info("connection %d: %d of %d origin samples differ (round %d); sending fresh "
                 "ones", conn_id, differ, total, r.rounds)
        try:
            r.samples = self._choose()
        except OSError as exc:
            del self._rounds[conn_id]
            return m.reply_error(rid, ErrorCode.INTERNAL, f"cannot read the origin: {exc}")
        return m.verify_again(rid, [[off, n] for off, n, _ in r.samples], differ)

    # ------------------------------------------------------------------ samples

    def _read(self, offset: int, length: int) -> bytes:
        return self.store.origin.pread(offset, length)

    def _choose(self) -> list[tuple[int, int, int]]:
        """Sample ranges for one round, sorted, each with its CRC now."""
        size = self.store.sb.origin_bytes
        if size <= 0:
            return []
        length = min(SAMPLE_BYTES, self.store.chunk_size, size)
        pieces = -(-size // length)
        chosen: dict[int, bytes] = {}
        for piece in (0, pieces - 1):
            chosen[piece] = self._piece(piece, length, size)
        zeros: dict[int, bytes] = {}
        want = min(SAMPLES, pieces)
        for _ in range(PROBES):
            if len(chosen) >= want:
                break
            piece = _data_near(self.store.origin, self.rng.randrange(pieces) * length,
                               size) // length
            if piece in chosen or piece in zeros:
                continue
            data = self._piece(piece, length, size)
            if data.count(0) == len(data):
                zeros[piece] = data
            else:
                chosen[piece] = data
        for piece, data in zeros.items():
            if len(chosen) >= want:
                break
            chosen[piece] = data
        return [(p * length, len(d), checksum(d)) for p, d in sorted(chosen.items())]

    def _piece(self, piece: int, length: int, size: int) -> bytes:
        off = piece * length
        return self._read(off, min(length, size - off))


def _data_near(dev: Device, offset: int, size: int) -> int:
    """The first byte at or after ``offset`` that is not in a hole of a sparse file, so
    probes of a mostly sparse origin land on data; ``offset`` itself where the device
    cannot tell (block devices, memory) or there is no data after it."""
    fd = getattr(dev, "fd", None)
    if not isinstance(fd, int) or fd < 0:
        return offset
    try:
        found = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError:
        return offset
    return found if found < size else offset
