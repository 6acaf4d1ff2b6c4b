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

from importlib import import_module
from typing import Any

# Exports are loaded on first use, so importing only ``csnap_client.protocol`` (as the
# server does) pulls in neither asyncio nor the data-path code.
_EXPORTS = {
    "RunSet": "cache", "StoreMap": "cache",
    "AuthenticationError": "client", "Client": "client", "ClientClosedError": "client", "ConnectionLostError": "client",
    "NoLeaderError": "client", "ReconnectFailedError": "client", "SessionInfo": "client", "StoreChangedError": "client",
    "ControlClient": "control", "open_control": "control",
    "DeviceCheck": "devices", "WrongDeviceError": "protocol",
    "ProtocolError": "protocol", "RemoteError": "protocol", "SnapshotDeletedError": "protocol",
    "Volume": "volume", "connect": "volume",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # noqa: ANN401 - whatever the submodule exports
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'csnap_client' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
