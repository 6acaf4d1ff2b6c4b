"""A small asyncio client for etcd's v3 API, through its JSON gateway (no extra packages).

Only what leader election needs: leases (grant, keep alive, revoke) and keys (create
if absent, read, delete). Every call is one HTTP/1.1 POST of a JSON body to
``/v3/...`` on one of the cluster's client URLs; on a connection error the next URL is
tried, so a cluster with one member down still answers. Keys and values are bytes
(base64 on the wire, as the gateway wants).

Errors: :class:`EtcdUnavailable` when no member answered in time (the caller decides
what that means for its lease), :class:`EtcdError` for an answer that is an error.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class EtcdError(Exception):
    """etcd answered, with an error."""


class EtcdUnavailable(EtcdError):
    """No etcd member could be reached in time."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd keeps it."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(base64.b64decode(raw.get("key", "")), base64.b64decode(raw.get("value", "")),
                    int(raw.get("create_revision", 0)), int(raw.get("mod_revision", 0)),
                    int(raw.get("lease", 0)))


class EtcdClient:
    """Calls to an etcd cluster given as ``http://host:port`` URLs."""

    def __init__(self, urls: list[str], timeout: float = 2.0) -> None:
        if not urls:
            raise ValueError("at least one etcd URL is needed")
        self.endpoints: list[tuple[str, int]] = []
        for url in urls:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"etcd URL {url!r}: only http://HOST:PORT is supported")
            self.endpoints.append((parts.hostname, parts.port or 2379))
        self.timeout = timeout
        self._next = 0

    # -- leases ------------------------------------------------------------
    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease of ``ttl`` seconds: (lease id, the TTL etcd granted)."""
        reply = await self._call("/v3/lease/grant", {"TTL": ttl})
        if reply.get("error"):
            raise EtcdError(reply["error"])
        return int(reply["ID"]), int(reply["TTL"])

    async def keepalive(self, lease: int) -> int:
        """Renew a lease; the TTL left (0 if etcd no longer knows it: it expired)."""
        reply = await self._call("/v3/lease/keepalive", {"ID": lease})
        result = reply.get("result", reply)
        return int(result.get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """End a lease now (its keys go with it)."""
        await self._call("/v3/lease/revoke", {"ID": lease})

    # -- keys --------------------------------------------------------------
    async def create(self, key: bytes, value: bytes, lease: int) -> tuple[bool, KeyValue | None]:
        """Put ``key`` only if it does not exist; (created, the key as it is now)."""
        k = _b64(key)
        reply = await self._call("/v3/kv/txn", {
            "compare": [{"key": k, "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": _b64(value), "lease": str(lease)}}],
            "failure": [{"request_range": {"key": k}}]})
        if "error" in reply:
            raise EtcdError(reply["error"])
        return bool(reply.get("succeeded")), await self.get(key)

    async def get(self, key: bytes) -> KeyValue | None:
        """The key, or None."""
        reply = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = reply.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def delete_if(self, key: bytes, create_revision: int) -> bool:
        """Delete ``key`` if it is still the one created at ``create_revision``."""
        k = _b64(key)
        reply = await self._call("/v3/kv/txn", {
            "compare": [{"key": k, "target": "CREATE", "create_revision": str(create_revision)}],
            "success": [{"request_delete_range": {"key": k}}]})
        return bool(reply.get("succeeded"))

    # -- transport ---------------------------------------------------------
    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last: Exception | None = None
        for _ in range(len(self.endpoints)):
            host, port = self.endpoints[self._next]
            try:
                return await asyncio.wait_for(self._post(host, port, path, body), self.timeout)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                last = exc
                self._next = (self._next + 1) % len(self.endpoints)
        raise EtcdUnavailable(f"no etcd member answered {path}: {last}")

    @staticmethod
    async def _post(host: str, port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            data = json.dumps(body).encode()
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + data)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}
            if headers.get(b"transfer-encoding") == b"chunked":
                payload = await _read_chunked(reader)
            elif b"content-length" in headers:
                payload = await reader.readexactly(int(headers[b"content-length"]))
            else:
                payload = await reader.read()
        finally:
            writer.close()
        text = payload.strip().splitlines()[0] if payload.strip() else b"{}"
        reply = json.loads(text)
        if status >= 400 and "error" not in reply:
            raise EtcdError(f"HTTP {status} from etcd {path}: {payload[:200]!r}")
        return reply


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """The first chunk's worth of a chunked body is all a unary call sends."""
    out = b""
    while True:
        size = int((await reader.readline()).strip() or b"0", 16)
        if size == 0:
            return out
        out += await reader.readexactly(size)
        await reader.readline()
        if out.strip():
            return out
