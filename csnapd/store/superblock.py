"""The superblock: finding the valid copy, and writing checkpoints.

Two copies live at block 0 (slot A) and block 1 (slot B).  Checkpoint n writes
slot n % 2, so a torn superblock write can only damage the copy that is not
the newest; open picks the valid copy with the higher generation.  Between
checkpoints the superblock changes only through the journal (home address 0).

Invariants:
  * Both slots are written at init, so a stale superblock of an earlier store
    on the same device can never win.
  * An unknown incompatible feature bit or a newer format version refuses the
    open; unknown autoclear bits are cleared by a writer.
"""

from __future__ import annotations

import dataclasses

from . import format as fmt
from .device import Device
from .errors import CorruptionError, FormatError

_PROBE_SIZES = [1 << s for s in range(9, 21)]


class SuperState:
    """The live superblock fields plus a dirty flag for the next transaction."""

    def __init__(self, f: fmt.SuperFields) -> None:
        self.f = f
        self.dirty = False
        self.changes = 0  # counts touches, so the store can tell an operation changed it

    def touch(self) -> None:
        self.dirty = True
        self.changes += 1

    def snapshot(self) -> fmt.SuperFields:
        return dataclasses.replace(self.f)

    def seal(self, addr: int, f: fmt.SuperFields | None = None) -> bytes:
        return seal_super(addr, f or self.f)


def seal_super(addr: int, f: fmt.SuperFields) -> bytes:
    """A sealed superblock image of ``f`` for self address ``addr`` (pure)."""
    return fmt.seal(fmt.BlockKind.SUPER, addr, f.store_id, 0, fmt.encode_super(f), f.block_size)


def read_slots(dev: Device) -> list[tuple[int, fmt.SuperFields | None, str]]:
    """Decode both superblock slots: (slot, fields or None, problem)."""
    head = dev.pread(0, min(dev.size, 2 * _PROBE_SIZES[-1]))
    results: list[tuple[int, fmt.SuperFields | None, str]] = []
    for slot in (0, 1):
        best: fmt.SuperFields | None = None
        problem = "no superblock found"
        for bs in _PROBE_SIZES:
            image = head[slot * bs:(slot + 1) * bs]
            if len(image) < bs:
                break
            try:
                f = fmt.decode_super(image, slot)
            except CorruptionError as exc:
                if fmt.peek_header(image) is not None and problem == "no superblock found":
                    problem = str(exc)
                continue
            if f.block_size == bs:
                best = f
                break
        results.append((slot, best, "" if best else problem))
    return results


def load(dev: Device) -> tuple[fmt.SuperFields, int, list[str]]:
    """The newest valid superblock, its slot, and notes on a damaged slot."""
    slots = read_slots(dev)
    valid = [(f.generation, slot, f) for slot, f, _ in slots if f is not None]
    notes = [f"superblock slot {slot}: {problem}" for slot, f, problem in slots if f is None]
    if not valid:
        raise FormatError(f"{dev.path}: not a csnap store ({'; '.join(notes)})")
    _, slot, f = max(valid, key=lambda v: (v[0], -v[1]))
    check_features(f, dev.path)
    return f, slot, notes


def check_features(f: fmt.SuperFields, path: str) -> None:
    if f.version > fmt.FORMAT_VERSION:
        raise FormatError(f"{path}: store format version {f.version} is newer than this "
                          f"csnap understands ({fmt.FORMAT_VERSION}); upgrade csnap")
    unknown = f.incompat & ~fmt.INCOMPAT_KNOWN
    if unknown:
        raise FormatError(f"{path}: store uses unknown incompatible features 0x{unknown:x}; "
                          "upgrade csnap")


def write_slot(dev: Device, f: fmt.SuperFields) -> int:
    """Write ``f`` to the slot its generation selects (no flush); return slot.

    Touches only ``dev`` and ``f``, so a checkpoint runs it on a worker thread.
    """
    slot = f.generation % 2
    dev.pwrite(slot * f.block_size, seal_super(slot, f))
    return slot
