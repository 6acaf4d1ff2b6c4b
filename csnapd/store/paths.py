"""Opening a store by path, as the server and the offline tools do."""

from __future__ import annotations

from .device import AbsentDevice, Device, FileDevice
from .errors import StoreBusyError
from .store import DEFAULT_CACHE, Store
from .superblock import load


def open_store(store_path: str, origin_path: str | None = None, readonly: bool = False,
               cache_size: int = DEFAULT_CACHE, must_lock: bool = True) -> Store:
    """Open (and recover) the store at ``store_path``.

    The store is flock-ed exclusively, so a second server or a writing tool is
    refused while one holds it (unless ``must_lock`` is False: then the lock is
    taken if free and the store opened anyway if not, for an HA leader whose
    election already decided).  Without ``origin_path`` (offline checks and
    dumps) no copy-out can run and the origin size is not verified.
    """
    try:
        dev = FileDevice(store_path, writable=not readonly, lock=not readonly)
    except StoreBusyError:
        if must_lock:
            raise
        dev = FileDevice(store_path, writable=True, lock=False)
    origin: Device
    try:
        if origin_path is None:
            f, _, _ = load(dev)
            origin = AbsentDevice(f.origin_bytes)
        else:
            origin = FileDevice(origin_path, writable=False)
        return Store.open(dev, origin, cache_size=cache_size, readonly=readonly,
                          check_origin=origin_path is not None)
    except BaseException:
        dev.close()
        raise
