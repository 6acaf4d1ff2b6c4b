"""Noticing that the store or origin was replaced under a running csnapd.

Why: csnapd keeps its devices open, so renaming another file over the store's path (or
re-pointing a device link) goes unnoticed by the open file descriptor, while every client
that opens the path from now on gets the other file. Worse, a store overwritten in place
would have our commits written into someone else's data. So, every ``interval`` seconds
(from the engine's tick, on the store thread, so never during a commit), the watch
compares:

* for each device path: what the path names now (``os.stat``) with what the open
  descriptor is (``os.fstat``): the inode for files, the device number for block
  devices (udev may recreate a node, which changes its inode but not the device), and
  the size: a device may be enlarged (online growth: ``csnapctl grow`` then takes it
  into use), never made smaller than what the store uses of it;
* the store UUID in each superblock slot, read through the open descriptor (from the
  disk, not the page cache, on a block device another machine may write): a slot that
  held it must go on holding it (the server itself only ever writes its own UUID there).

A check costs two stats, two fstats and two 16-byte reads from the page cache.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass

from csnapd.store import format as fmt
from csnapd.store.device import Device, device_size
from csnapd.store.store import Store

DEFAULT_INTERVAL = 1.0  # seconds between checks
log = logging.getLogger("csnapd.engine")


@dataclass(frozen=True, slots=True)
class _Identity:
    """What a path or descriptor refers to, as far as the watch compares it."""

    block: bool
    dev: int  # st_rdev for block devices, st_dev for files
    ino: int  # 0 for block devices

    @classmethod
    def of(cls, st: os.stat_result) -> _Identity:
        if stat.S_ISBLK(st.st_mode):
            return cls(True, st.st_rdev, 0)
        return cls(False, st.st_dev, st.st_ino)

    def describe(self) -> str:
        if self.block:
            return f"block device {os.major(self.dev)}:{os.minor(self.dev)}"
        return f"inode {self.ino} on device {os.major(self.dev)}:{os.minor(self.dev)}"


class DeviceWatch:
    """Call ``due(now)`` from the tick; it returns why the devices changed, or None."""

    def __init__(self, store: Store, now: float = 0.0,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.store, self.interval = store, interval
        self.next_check = now + interval
        self._sizes = {"store": store.dev.size, "origin": store.origin.size}
        self._slots = {slot for slot in (0, 1) if self._uuid_at(slot) == store.sb.uuid}

    def due(self, now: float) -> str | None:
        """Check if the interval has passed; the reason for stopping, or None."""
        if now < self.next_check:
            return None
        self.next_check = now + self.interval
        return self.check()

    def check(self) -> str | None:
        """Compare paths, descriptors, sizes and superblock UUIDs (see the module doc)."""
        for what, dev in (("store", self.store.dev), ("origin", self.store.origin)):
            reason = self._check_path(what, dev)
            if reason:
                return reason
        uuid = self.store.sb.uuid
        for slot in (0, 1):
            try:
                found = self._uuid_at(slot)
            except OSError as exc:
                return f"store {self.store.dev.path}: cannot read superblock slot {slot}: {exc}"
            if found == uuid:
                self._slots.add(slot)  # e.g. a slot damaged at start, since rewritten
            elif slot in self._slots:
                return (f"store {self.store.dev.path}: superblock slot {slot} no longer holds "
                        f"this store's UUID {uuid.hex()} (found {found.hex()}): overwritten "
                        "under the running server")
        return None

    def _check_path(self, what: str, dev: Device) -> str | None:
        fd = getattr(dev, "fd", None)
        if not isinstance(fd, int) or fd < 0:
            return None  # not a file or block device (tests): nothing to compare
        path = dev.path
        try:
            mine = os.fstat(fd)
            size = device_size(fd)
        except OSError as exc:
            return f"{what} {path}: the open device cannot be examined: {exc}"
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return f"{what} {path} no longer exists (removed or renamed away)"
        except OSError as exc:
            return f"{what} {path} cannot be examined: {exc}"
        was, is_now = _Identity.of(mine), _Identity.of(now)
        if was != is_now:
            return (f"{what} {path} was replaced: the path now names {is_now.describe()}, "
                    f"not the {was.describe()} csnapd opened")
        if size != self._sizes[what]:
            f = self.store.sb
            used = f.store_chunks * f.chunk_size if what == "store" else f.origin_bytes
            if size < used:
                return (f"{what} {path} changed size from {self._sizes[what]} to {size} bytes, "
                        f"less than the {used} bytes the store uses")
            log.info("%s %s was enlarged from %d to %d bytes; csnapctl grow --%s takes it "
                     "into use", what, path, self._sizes[what], size, what)
            self._sizes[what] = size
        return None

    def _uuid_at(self, slot: int) -> bytes:
        off = slot * self.store.block_size + fmt.SUPER_UUID_OFFSET
        fd = getattr(self.store.dev, "fd", None)
        if isinstance(fd, int) and fd >= 0 and stat.S_ISBLK(os.fstat(fd).st_mode):
            # another machine may have written the shared device: read the disk, not our
            # page cache (the store's own writes are flushed, so these pages are clean)
            os.posix_fadvise(fd, off, len(self.store.sb.uuid), os.POSIX_FADV_DONTNEED)
        return self.store.dev.pread(off, len(self.store.sb.uuid))
