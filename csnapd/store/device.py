"""Block devices under the store: files, block devices, and memory.

A device is a flat byte range with pread/pwrite/flush.  The store decides
what goes where; a device only moves bytes and makes them durable.

Invariants:
  * ``flush()`` returns only when every earlier ``pwrite`` is durable
    (fdatasync on files and block devices).
  * Short reads past the end of a file read as zeros (sparse files).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from .errors import StoreBusyError

BLKGETSIZE64 = 0x80081272


class Device:
    """Interface every device implements."""

    path: str = "<device>"

    @property
    def size(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def pread(self, offset: int, length: int) -> bytes:  # pragma: no cover
        raise NotImplementedError

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        raise NotImplementedError

    def flush(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        """Release the device."""

    def refresh_size(self) -> int:
        """Look at the device's size again (it may have been enlarged); return it.

        Devices whose size cannot change in place just return it.
        """
        return self.size


def device_size(fd: int) -> int:
    """Size in bytes of a regular file or block device."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        buf = fcntl.ioctl(fd, BLKGETSIZE64, b"\0" * 8)
        return struct.unpack("<Q", buf)[0]
    raise OSError(errno.EINVAL, "not a regular file or block device")


class FileDevice(Device):
    """A regular file or block device opened with os.open.

    ``lock=True`` takes an exclusive, non-blocking flock so two processes can
    never both write the same store; when another process holds it,
    :class:`StoreBusyError` says so in words.
    """

    def __init__(self, path: str, writable: bool = True, lock: bool = False) -> None:
        self.path, self.writable = path, writable
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        self.fd = os.open(path, flags)
        try:
            self._size = device_size(self.fd)
            if lock:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StoreBusyError(path) from None
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def size(self) -> int:
        return self._size

    def refresh_size(self) -> int:
        """The file or block device may have been enlarged since it was opened."""
        self._size = device_size(self.fd)
        return self._size

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        while len(data) < length:
            more = os.pread(self.fd, length - len(data), offset + len(data))
            if not more:
                return data + bytes(length - len(data))
            data += more
        return data

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MemoryDevice(Device):
    """A device held in memory, for tests and simulations."""

    def __init__(self, size: int, path: str = "<memory>") -> None:
        self.data = bytearray(size)
        self.path = path
        self.flushes = 0

    @property
    def size(self) -> int:
        return len(self.data)

    def pread(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length]).ljust(length, b"\0")

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset + len(data) > len(self.data):
            raise OSError(errno.ENOSPC, "write past end of device")
        self.data[offset:offset + len(data)] = data

    def flush(self) -> None:
        self.flushes += 1

    def grow(self, size: int) -> None:
        """Enlarge the device to ``size`` bytes (new bytes zero), as truncate does a file."""
        if size > len(self.data):
            self.data.extend(bytes(size - len(self.data)))


class VolatileDevice(Device):
    """Wraps a device with a volatile write cache, to simulate power loss.

    Writes land in ``pending`` until ``flush()``; ``crash()`` throws away
    everything not flushed, which is exactly what a power cut may do.
    """

    def __init__(self, inner: Device) -> None:
        self.inner = inner
        self.path = inner.path
        self.pending: dict[int, bytes] = {}
        self._order: list[tuple[int, bytes]] = []

    @property
    def size(self) -> int:
        return self.inner.size

    def refresh_size(self) -> int:
        return self.inner.refresh_size()

    def pread(self, offset: int, length: int) -> bytes:
        base = bytearray(self.inner.pread(offset, length))
        for woff, data in self._order:
            lo, hi = max(offset, woff), min(offset + length, woff + len(data))
            if lo < hi:
                base[lo - offset:hi - offset] = data[lo - woff:hi - woff]
        return bytes(base)

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset + len(data) > self.inner.size:
            raise OSError(errno.ENOSPC, "write past end of device")
        self._order.append((offset, bytes(data)))

    def flush(self) -> None:
        for offset, data in self._order:
            self.inner.pwrite(offset, data)
        self._order.clear()
        self.inner.flush()

    def crash(self) -> None:
        """Lose every write since the last flush."""
        self._order.clear()


class AbsentDevice(Device):
    """Stands in for an origin that is not needed (offline checks and dumps)."""

    def __init__(self, size: int, path: str = "<no origin>") -> None:
        self._size, self.path = size, path

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, length: int) -> bytes:
        raise OSError(errno.ENODEV, "no origin device was given")

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        raise OSError(errno.EROFS, "no origin device was given")

    def flush(self) -> None:
        """Nothing to flush."""
