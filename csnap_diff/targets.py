"""Where a diff is applied: a csnap volume (through the client library) or a file/device.

Every target has ``size``, and async ``write(offset, data)``, ``zero(offset, length)``,
``flush()`` and ``close()``; plus ``state()`` / ``record_state(name)`` for the from-state
check: which snapshot the target's contents equal, as far as csnap can tell.

* :class:`VolumeTarget` writes through :class:`csnap_client.Volume`, so origin writes copy
  out what snapshots share, as for every client. Zero ranges are written as zeros (csnap
  has no discard). Its state is checked by the server (:mod:`csnap_diff.checks`).
* :class:`FileTarget` is a regular file or a block device. Zeros are punched as holes in
  a regular file (fallocate), zeroed with BLKZEROOUT on a block device, else written.
  The snapshot a file holds is recorded in its extended attribute ``user.csnap.snapshot``
  after a complete apply; files without it (block devices, file systems without user
  xattrs, images made another way) have no recorded state.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
from typing import Any

XATTR = "user.csnap.snapshot"
_PIECE = 4 << 20
_FALLOC_PUNCH = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
_BLKZEROOUT = 0x127F
_BLKGETSIZE64 = 0x80081272


def _libc_fallocate() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _libc_fallocate()


class TargetError(Exception):
    """The target cannot take this diff (size, missing, not writable)."""


class FileTarget:
    """A regular file (created or resized to the diff's size) or a block device."""

    def __init__(self, path: str, size: int | None, create: bool = False) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        try:
            self.fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            raise TargetError(f"{path} does not exist (a diff from a snapshot needs the "
                              "image of that snapshot)") from None
        st = os.fstat(self.fd)
        self.block = stat.S_ISBLK(st.st_mode)
        if self.block:
            buf = fcntl.ioctl(self.fd, _BLKGETSIZE64, b"\0" * 8)
            self.size = struct.unpack("Q", buf)[0]
            if size is not None and self.size < size:
                os.close(self.fd)
                raise TargetError(f"{path} has {self.size} bytes, the diff needs {size}")
        else:
            if size is not None and st.st_size != size:
                os.ftruncate(self.fd, size)
            self.size = size if size is not None else st.st_size
        self._punch = not self.block and _fallocate is not None
        self._zeroout = self.block

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``."""
        mv = memoryview(data)
        done = 0
        while done < len(mv):
            done += os.pwrite(self.fd, mv[done:], offset + done)

    async def zero(self, offset: int, length: int) -> None:
        """Make ``[offset, offset + length)`` read as zeros."""
        if self._punch:
            if _fallocate(self.fd, _FALLOC_PUNCH, offset, length) == 0:
                return
            self._punch = False  # file system without hole punching: write zeros
        if self._zeroout:
            try:
                fcntl.ioctl(self.fd, _BLKZEROOUT, struct.pack("QQ", offset, length))
                return
            except OSError:
                self._zeroout = False
        zeros = bytes(min(length, _PIECE))
        done = 0
        while done < length:
            n = min(len(zeros), length - done)
            await self.write(offset + done, memoryview(zeros)[:n])
            done += n

    async def flush(self) -> None:
        """fsync: everything written so far is durable."""
        await asyncio.get_running_loop().run_in_executor(None, os.fsync, self.fd)

    def state(self) -> str | None:
        """The snapshot this file was last brought to, if recorded."""
        try:
            return os.getxattr(self.fd, XATTR).decode("utf-8", "replace")
        except OSError:
            return None

    def record_state(self, name: str | None) -> bool:
        """Record (or with None, remove) the snapshot the file now holds; False if the
        file system cannot keep it."""
        try:
            if name is None:
                with contextlib.suppress(OSError):
                    os.removexattr(self.fd, XATTR)
            else:
                os.setxattr(self.fd, XATTR, name.encode("utf-8"))
            return True
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                return False
            raise

    async def close(self) -> None:
        """Close the file descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class VolumeTarget:
    """A csnap volume opened with :func:`csnap_client.connect` (origin or a snapshot)."""

    def __init__(self, volume: Any) -> None:
        self.volume = volume
        self.size = volume.size
        self._zeros = bytes(_PIECE)

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write through the volume (origin writes copy out shared chunks first)."""
        mv = memoryview(data)
        for i in range(0, len(mv), _PIECE):
            await self.volume.write(offset + i, mv[i:i + _PIECE])

    async def zero(self, offset: int, length: int) -> None:
        """Write zeros (csnap volumes have no discard)."""
        done = 0
        while done < length:
            n = min(_PIECE, length - done)
            await self.volume.write(offset + done, memoryview(self._zeros)[:n])
            done += n

    async def flush(self) -> None:
        """fdatasync of the devices written."""
        await self.volume.flush()

    async def close(self) -> None:
        """Close the volume (flush, DETACH)."""
        await self.volume.close()


class Applier:
    """Applies extents to a target with up to ``depth`` writes in flight.

    Writes that overlap one in flight wait for it, so a diff with overlapping records
    (allowed by the format) ends as if applied in order.
    """

    def __init__(self, target: FileTarget | VolumeTarget, depth: int = 4) -> None:
        self.target, self.depth = target, depth
        self._tasks: dict[asyncio.Task[None], tuple[int, int]] = {}
        self.bytes = 0

    async def _room(self, lo: int, hi: int) -> None:
        while self._tasks:
            clash = [t for t, (a, b) in self._tasks.items() if a < hi and lo < b]
            if not clash and len(self._tasks) < self.depth:
                return
            done, _ = await asyncio.wait(clash or list(self._tasks),
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                del self._tasks[t]
                t.result()

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Queue a data write."""
        self._check(offset, len(data))
        await self._room(offset, offset + len(data))
        self._spawn(self.target.write(offset, data), offset, len(data))

    async def zero(self, offset: int, length: int) -> None:
        """Queue a zero range."""
        self._check(offset, length)
        await self._room(offset, offset + length)
        self._spawn(self.target.zero(offset, length), offset, length)

    def _check(self, offset: int, length: int) -> None:
        if offset + length > self.target.size:
            raise TargetError(f"bytes {offset}..{offset + length} are outside the target "
                              f"({self.target.size} bytes)")

    def _spawn(self, coro: Any, offset: int, length: int) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks[task] = (offset, offset + length)
        self.bytes += length

    async def drain(self) -> None:
        """Wait for every queued write; the first failure is raised."""
        tasks, self._tasks = list(self._tasks), {}
        if tasks:
            for t in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(t, BaseException):
                    raise t

    async def sync(self) -> None:
        """Drain, then make everything durable."""
        await self.drain()
        await self.target.flush()
