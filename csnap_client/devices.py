"""Device verification, client side: refuse devices that are not the server's.

Why: the client does the data I/O on the shared origin and store devices itself. Given
the wrong device (a mislabelled LUN, a file of another csnap setup) it would read someone
else's bytes and write into them, silently. So before any data I/O, on the first connect
and again after every reconnect (which may reach a restarted server), the session checks
the devices it opened against what IDENTIFY_OK says (docs/protocol.md, "Device
verification"); this module never parses the store format, the server says what to
look for:

* origin: its size must be at least ``origin_bytes``; then the CRC32C of each sample range the
  server chose goes back in VERIFY_DEVICES, and the server compares with its own origin
  (VERIFY_AGAIN brings fresh samples after a mismatch that live writes may explain);
* store: its size must be at least ``devices.store_bytes``, and one of the ``devices.store``
  byte strings (the store UUID in a superblock slot) must be found at its offset.

A device that fails raises :class:`WrongDeviceError` naming its path and what did not
match. A server that sends no ``devices`` (an older csnapd) gets the size check only.

Must not import csnapd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import crc32c

from .protocol import ErrorCode, Message, WrongDeviceError, verify_devices

log = logging.getLogger("csnap_client")

#: Call that sends ``build(id, *args)`` on the connection being set up; returns the reply.
Call = Callable[..., Awaitable[Message]]

MAX_ROUNDS = 16  # VERIFY_AGAIN rounds we follow (the server refuses after a few itself)
RETRY_DELAY = 0.02  # seconds before answering fresh samples: lets a burst of writes pass


def device_bytes(fd: int) -> int:
    """Size in bytes of the regular file or block device open as ``fd``."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    return os.lseek(fd, 0, os.SEEK_END)


def read_range(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset``; bytes past the end of the device read as zeros."""
    data = b""
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data.ljust(length, b"\0")


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return (st.st_rdev, 0) if stat.S_ISBLK(st.st_mode) else (st.st_dev, st.st_ino)


class DeviceCheck:
    """Checks the ``origin`` and ``store`` paths (None: not opened by this client).

    Installed as ``Client.device_check``; the session awaits it with each IDENTIFY_OK.
    It reads through descriptors of its own until :meth:`adopt` hands it the ones the
    volume does its I/O with (after checking they are the same files), so what was
    verified is what is used.
    """

    def __init__(self, origin: str | os.PathLike[str] | None,
                 store: str | os.PathLike[str] | None) -> None:
        self.paths = {"origin": origin, "store": store}
        self._fds: dict[str, int] = {}
        self._own: set[str] = set()
        self._warned = False

    async def __call__(self, reply: Message, call: Call) -> None:
        """Verify the devices against one IDENTIFY_OK; raise WrongDeviceError if wrong."""
        self._open()
        origin, store = self._fds.get("origin"), self._fds.get("store")
        if origin is not None:
            self._size("origin", origin, reply["origin_bytes"])
        devices = reply.get("devices")
        if devices is None:
            if not self._warned:
                self._warned = True
                log.warning("the server does not offer device verification (an older "
                            "csnapd?): only the origin's size was checked")
            return
        if store is not None:
            self._size("store", store, devices["store_bytes"])
            await self._check_store(store, devices["store"], reply["store_uuid"])
        if origin is not None and devices["origin"]:
            await self._check_origin(origin, devices["origin"], call)

    def adopt(self, origin_fd: int, store_fd: int) -> None:
        """Read through the volume's descriptors from now on (``-1``: not opened).

        Raises WrongDeviceError if one names another file than the one verified (the
        path was changed in between).
        """
        for what, fd in (("origin", origin_fd), ("store", store_fd)):
            mine = self._fds.get(what)
            if fd < 0 or mine is None:
                continue
            if _identity(fd) != _identity(mine):
                raise self._wrong(what, "changed between the device check and opening it")
            if what in self._own:
                os.close(mine)
                self._own.discard(what)
            self._fds[what] = fd

    def close(self) -> None:
        """Close the descriptors this check opened itself. Idempotent."""
        for what in list(self._own):
            os.close(self._fds.pop(what))
        self._own.clear()

    # ------------------------------------------------------------------ internals

    def _open(self) -> None:
        for what, path in self.paths.items():
            if path is not None and what not in self._fds:
                self._fds[what] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                self._own.add(what)

    def _wrong(self, what: str, detail: str) -> WrongDeviceError:
        path = os.fspath(self.paths[what])  # type: ignore[arg-type]
        return WrongDeviceError(ErrorCode.WRONG_DEVICE,
                                f"{what} {path} {detail} (is this the right device?)")

    def _size(self, what: str, fd: int, want: int) -> None:
        """The device holds at least what the server uses of it. Larger is fine: it was
        enlarged and not grown into yet, or the volume is a snapshot taken before the
        origin grew (the contents checks still tell a wrong device)."""
        size = device_bytes(fd)
        if size < want:
            raise self._wrong(what, f"is {size} bytes but the server's {what} is {want} bytes")

    async def _check_store(self, fd: int, marks: list[list[Any]], uuid: str) -> None:
        found = await asyncio.to_thread(
            lambda: [read_range(fd, off, len(want)) == want for off, want in marks])
        if marks and not any(found):
            raise self._wrong("store", f"is not the server's store: the store UUID {uuid} is "
                                       "in neither superblock slot")

    async def _check_origin(self, fd: int, samples: list[list[int]], call: Call) -> None:
        for round_ in range(1, MAX_ROUNDS + 1):
            crcs = await asyncio.to_thread(
                lambda s=samples: [crc32c.crc32c(read_range(fd, off, n)) for off, n in s])
            try:
                answer = await call(verify_devices, crcs)
            except WrongDeviceError as exc:
                detail = exc.message.removeprefix("origin: ")
                raise self._wrong("origin", "does not match the server's origin: "
                                            f"{detail}") from None
            if answer["op"] == "VERIFY_OK":
                return
            log.info("origin check round %d: %d sample(s) differ (live writes?); trying "
                     "fresh samples", round_, answer["differ"])
            samples = answer["origin"]
            await asyncio.sleep(RETRY_DELAY)
        raise self._wrong("origin", "could not be verified: the server kept asking for "
                                    f"fresh samples ({MAX_ROUNDS} rounds)")
