"""csnap client library: use the origin or a snapshot of a csnapd-managed volume set.

Quick start::

    import csnap_client
    async with await csnap_client.connect("127.0.0.1", 4270, volume="origin",
                                          origin="/dev/vg/origin",
                                          store="/dev/vg/store") as vol:
        await vol.write(0, b"hello")
        data = await vol.read(0, 5)

Layers: ``protocol`` (pure wire protocol), ``client`` (one TCP session: ids, replies,
reconnects, leases), ``cache`` (bounded run-length caches), ``volume`` (byte-level I/O on
the shared devices), ``control`` (the admin socket). Never imports csnapd.
"""

from .cache import RunSet, StoreMap
from .client import (
    Client,
    ClientClosedError,
    ConnectionLostError,
    ReconnectFailedError,
    SessionInfo,
    StoreChangedError,
)
from .control import ControlClient, open_control
from .protocol import ProtocolError, RemoteError, SnapshotDeletedError
from .volume import Volume, connect

__all__ = [
    "connect", "Volume", "Client", "SessionInfo", "ControlClient", "open_control",
    "RunSet", "StoreMap",
    "ProtocolError", "RemoteError", "SnapshotDeletedError",
    "ClientClosedError", "ConnectionLostError", "ReconnectFailedError", "StoreChangedError",
]
