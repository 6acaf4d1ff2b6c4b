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
  last range, which a wrong device of the same size most often differs in. Each round
  reads a few random probes (half steered past the holes of a sparse origin with
  SEEK_DATA, half uniform) and re-reads a few data ranges earlier rounds found (a small
  pool), so even an origin that is mostly zeros gets data samples once some probe has
  found data; zero ranges fill the rest. A round costs at most 2 + SAMPLES/2 + PROBES
  reads of SAMPLE_BYTES (64 KiB); while the pool is nearly empty, one round every
  HUNT_S seconds probes HUNT_PROBES ranges instead (256 KiB).

The origin changes under live writes, so a sample counts as matching if the client's
checksum equals the server's when it chose the sample *or* when it checks it (one write
in between cannot cause a mismatch), and a round with a mismatch is retried with fresh
samples (``VERIFY_AGAIN``) up to ``MAX_ROUNDS`` rounds before ``WRONG_DEVICE``. A wrong
device differs in every round. Limits: where the server's origin reads as zeros, only
the size and zeros can be compared; a device that differs only outside the sampled
ranges (a copy of the origin, say) passes.

Everything here runs on the store thread (the engine's), like every other device read.
"""

from __future__ import annotations

import logging
import os
import random
import time
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
PROBES = 8  # random ranges read per round: half steered onto data (SEEK_DATA), half uniform
POOL = 64  # data ranges remembered from earlier rounds (re-read when used)
HUNT_PROBES = 64  # probes of a round while the pool is nearly empty (at most every HUNT_S)
HUNT_S = 10.0
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
        self._pool: set[int] = set()  # origin ranges (by index) last seen holding data
        self._next_hunt = 0.0  # monotonic time after which a nearly empty pool may hunt

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
                                 f"({r.rounds} rounds, each with differences)")
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
        """Sample ranges for one round, sorted, each with its CRC now.

        The first and the last range; then ranges holding data: a few from the pool of
        data ranges earlier rounds found (re-read, so always current) and what this
        round's probes find; then zero ranges from the probes to fill up.
        """
        size = self.store.sb.origin_bytes
        if size <= 0:
            return []
        length = min(SAMPLE_BYTES, self.store.chunk_size, size)
        pieces = -(-size // length)
        want = min(SAMPLES, pieces)
        chosen = {p: self._piece(p, length, size) for p in (0, pieces - 1)}
        data: dict[int, bytes] = {}
        zeros: dict[int, bytes] = {}
        known = [p for p in self._pool if p not in chosen]
        for piece in self.rng.sample(known, min(len(known), want // 2)):
            self._sort(piece, self._piece(piece, length, size), data, zeros)
        probes = PROBES
        if len(self._pool) < SAMPLES // 2 and time.monotonic() >= self._next_hunt:
            probes, self._next_hunt = HUNT_PROBES, time.monotonic() + HUNT_S
        for probe in range(probes):
            offset = self.rng.randrange(pieces) * length
            if probe % 2 == 0:  # half the probes look for data, half are uniform
                offset = _data_near(self.store.origin, offset, size, self.rng)
            piece = offset // length
            if piece not in chosen and piece not in data and piece not in zeros:
                self._sort(piece, self._piece(piece, length, size), data, zeros)
        for piece, image in [*data.items(), *zeros.items()]:
            if len(chosen) >= want:
                break
            chosen[piece] = image
        return [(p * length, len(d), checksum(d)) for p, d in sorted(chosen.items())]

    def _sort(self, piece: int, image: bytes, data: dict[int, bytes],
              zeros: dict[int, bytes]) -> None:
        """File a range read under data or zeros, keeping the pool of data ranges."""
        if image.count(0) == len(image):
            zeros[piece] = image
            self._pool.discard(piece)
        else:
            data[piece] = image
            if len(self._pool) < POOL:
                self._pool.add(piece)

    def _piece(self, piece: int, length: int, size: int) -> bytes:
        off = piece * length
        return self._read(off, min(length, size - off))


def _data_near(dev: Device, offset: int, size: int, rng: random.Random) -> int:
    """Where a probe at ``offset`` should read: ``offset`` itself if it is in data (or
    the device cannot tell: block devices, memory), else a random byte of the next data
    extent of the sparse file (SEEK_DATA, SEEK_HOLE; wrapping round to the start), so
    probes of a mostly sparse origin land on data, spread over each extent; ``offset``
    if the file holds no data at all."""
    fd = getattr(dev, "fd", None)
    if not isinstance(fd, int) or fd < 0:
        return offset
    try:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after offset; wrap around to the first data
            start = os.lseek(fd, 0, os.SEEK_DATA)
        if start == offset:
            return offset
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
    except OSError:  # no data at all, or SEEK_DATA not supported
        return offset
    return rng.randrange(start, end) if start < end else offset
