"""A write-recording device for crash-state enumeration (tests only).

The dm-log-writes idea in process: every ``pwrite`` and every ``flush`` the
store issues is appended to a log, in issue order, and passed through to an
inner device so the workload runs normally.  The test adds ``mark`` entries
(for example "operation 7 acknowledged") so a crash state can be related to
what a client had been told.

Log entries:
  ("W", offset, data)   one pwrite, exactly as issued (data is immutable bytes)
  ("F",)                one flush (fdatasync): a barrier
  ("M", label)          a mark inserted by the test; not an I/O

A crash state is the base image (the device as it was when recording began)
plus a subset of the logged writes; ``replay`` builds one.  What subsets are
legal is the crash model's business (see csnap_soak/crash_harness.py): everything
before the last barrier is on disk, anything after it may or may not be, in
any order, and a multi-sector write may be torn at a sector boundary.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from csnapd.store.device import Device, MemoryDevice

SECTOR = 512

Entry = tuple


class RecordingDevice(Device):
    """Pass-through device that logs writes, flushes and test marks."""

    def __init__(self, inner: Device) -> None:
        self.inner = inner
        self.path = inner.path
        self.log: list[Entry] = []

    @property
    def size(self) -> int:
        return self.inner.size

    def pread(self, offset: int, length: int) -> bytes:
        return self.inner.pread(offset, length)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset < 0 or offset + len(data) > self.inner.size:
            raise OSError(errno.ENOSPC, "write past end of device")
        blob = bytes(data)
        self.log.append(("W", offset, blob))
        self.inner.pwrite(offset, blob)

    def flush(self) -> None:
        self.log.append(("F",))
        self.inner.flush()

    def mark(self, label: object) -> None:
        self.log.append(("M", label))

    def close(self) -> None:
        """Nothing to release: the log must outlive a store's close()."""

    # -- views of the log -------------------------------------------------
    def writes(self) -> list[tuple[int, bytes]]:
        return [(e[1], e[2]) for e in self.log if e[0] == "W"]

    @property
    def flushes(self) -> int:
        return sum(1 for e in self.log if e[0] == "F")


class ImageDevice(MemoryDevice):
    """A MemoryDevice that takes ownership of an existing image."""

    def __init__(self, image: bytearray, path: str = "<crash image>") -> None:
        self.data = image
        self.path = path
        self.flushes = 0

    def pread(self, offset: int, length: int) -> bytes:
        if offset + length <= len(self.data):
            return bytes(memoryview(self.data)[offset:offset + length])  # one copy, not two
        return super().pread(offset, length)


def apply_write(image: bytearray, offset: int, data: bytes) -> None:
    image[offset:offset + len(data)] = data


def torn(old: bytes, new: bytes, keep_new: int, head: bool, unit: int = SECTOR) -> bytes:
    """A torn write: ``keep_new`` units of ``new`` (leading if ``head``), the rest ``old``."""
    cut = keep_new * unit if head else len(new) - keep_new * unit
    if head:
        return new[:cut] + old[cut:]
    return old[:cut] + new[cut:]


def replay(base: bytes | bytearray, writes: Iterable[tuple[int, bytes]]) -> bytearray:
    """Base image plus ``writes`` applied in the given order."""
    image = bytearray(base)
    for offset, data in writes:
        apply_write(image, offset, data)
    return image
