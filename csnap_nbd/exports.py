"""The csnap side of the gateway: which exports exist, their volumes and block status.

Owns: the *catalogue* session (one csnap data connection identified as the origin, used
for LIST_VOLUMES so that snapshots created after start appear without a restart), name
resolution (``origin``/empty name, snapshot name, snapshot tag), the shared, reference
counted :class:`csnap_client.Volume` of every export in use, and the answers to block
status queries per metadata context.

Why one Volume per export rather than per NBD connection: all NBD connections to an
export then share one csnap session, one cache and one file descriptor per device, so a
FLUSH on any connection covers writes completed on all of them (that is what lets the
server advertise NBD_FLAG_CAN_MULTI_CONN), and the csnap server sees one client per export.

Block status (see docs/nbd.md):
  * ``base:allocation``: always "allocated, data" (flags 0). csnap cannot tell which
    chunks read as zeros without reading them, and reporting a hole over data would make
    copy tools skip it; flags 0 is the truthful answer the spec allows.
  * ``qemu:allocation-depth``: on a snapshot, 1 for chunks the snapshot owns (it has an
    exception in the store: QUERY_MAP lists it), 2 for chunks still shared with the origin
    (read through to the origin, QEMU's "backing" layer). On the origin, 1 everywhere.
  * ``qemu:dirty-bitmap:NAME`` on the origin: 1 ("dirty") for chunks where snapshot NAME
    has an exception, i.e. chunks the origin changed since NAME was taken (or that were
    written through NAME itself), 0 elsewhere. Asked with QUERY_MAP on a session
    identified as NAME.
  * ``qemu:dirty-bitmap:NAME`` on a snapshot export: 1 for chunks whose copy differs
    between the exported snapshot and snapshot NAME (what changed since NAME, for an
    incremental backup of the snapshot), 0 elsewhere. Asked with QUERY_CHANGES (base NAME)
    on the export's own session.

Must not import csnapd. Uses csnap_client only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from csnap_client.client import Client, NoLeaderError
from csnap_client.devices import DeviceCheck
from csnap_client.protocol import NotLeaderError
from csnap_client.protocol import messages as m
from csnap_client.volume import Volume, connect

from . import protocol as nbd

log = logging.getLogger("csnap_nbd")

ORIGIN = "origin"


@dataclass(frozen=True, slots=True)
class Export:
    """A resolvable export: the origin or one live snapshot."""

    name: str  # canonical export name ("origin" or the snapshot name)
    snapshot: dict[str, Any] | None  # LIST_VOLUMES entry {name, tag, created, squashed}

    @property
    def is_origin(self) -> bool:
        """True for the origin export."""
        return self.snapshot is None

    @property
    def key(self) -> tuple[Any, ...]:
        """Identity of the underlying volume (a re-created name is a different volume)."""
        if self.snapshot is None:
            return (ORIGIN,)
        s = self.snapshot
        return ("snapshot", s["name"], s["tag"], s["created"])

    @property
    def description(self) -> str:
        """Human text for NBD_OPT_LIST and NBD_INFO_DESCRIPTION."""
        if self.snapshot is None:
            return "csnap origin volume"
        return f"csnap snapshot {self.snapshot['name']!r} (tag {self.snapshot['tag']})"


@dataclass(slots=True)
class _Shared:
    """One open Volume and how many users hold it."""

    export: Export
    ready: asyncio.Future[Volume]
    refs: int = 0


@dataclass(slots=True)
class Session:
    """What one NBD connection holds in transmission phase: its export and volumes.

    ``contexts`` maps metadata context id -> name; ``bitmaps`` holds the snapshot volumes
    the selected ``qemu:dirty-bitmap:NAME`` contexts query.
    """

    export: Export
    volume: Volume
    read_only: bool
    contexts: dict[int, str] = field(default_factory=dict)
    bitmaps: dict[str, Volume] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)  # snapshot export: ctx -> base name
    #: the size this connection was given at its handshake (NBD cannot announce a
    #: growth to a connected client: it keeps this size until it reconnects)
    size: int = 0


class ExportError(Exception):
    """An export cannot be used (unknown, deleted, refused by csnapd)."""


class Gateway:
    """Everything the NBD server asks of csnap. Create, ``await start()``, use, ``close()``."""

    def __init__(self, host: str, port: int, origin: str | os.PathLike[str],
                 store: str | os.PathLike[str], *, read_only: bool = False,
                 io_threads: int = 8, **client_options: Any) -> None:
        self.host, self.port = host, port
        self.origin, self.store = os.fspath(origin), os.fspath(store)
        self.read_only = read_only
        self.io_threads = io_threads
        self.client_options = client_options
        self.catalogue: Client | None = None
        self.size = 0
        self.chunk_size = 0
        self.max_chunks = m.MAX_CHUNKS_PER_REQUEST
        self._shared: dict[tuple[Any, ...], _Shared] = {}
        self._check = DeviceCheck(self.origin, self.store)

    async def start(self) -> None:
        """Open the catalogue session (checks csnapd is reachable, learns the geometry).

        It also checks both devices against the server's, so a wrong --origin or
        --store stops the gateway at start (WrongDeviceError), not at the first export.
        """
        client = Client(self.host, self.port, ORIGIN, **self.client_options)
        client.device_check = self._check
        try:
            await client.connect()
        except BaseException:
            await client.close()
            raise
        assert client.info is not None
        self.catalogue = client
        client.resize_listeners.append(self._resized)
        self.size = client.info.origin_bytes
        self.chunk_size = client.info.chunk_size
        self.max_chunks = min(client.info.max_chunks, m.MAX_CHUNKS_PER_REQUEST)

    def _resized(self, info: Any) -> None:  # noqa: ANN401 - csnap_client.SessionInfo
        """The origin grew (csnapctl grow --origin): new NBD connections get the new size.

        NBD has no way to tell a connected client that an export grew: those keep the
        size they were given at their handshake until they reconnect.
        """
        log.info("origin grew from %d to %d bytes: new connections get the new size",
                 self.size, info.origin_bytes)
        self.size = info.origin_bytes

    def export_size(self, export: Export) -> int:
        """The size of an export: the origin's now, or a snapshot's (the origin's size when
        it was taken, which LIST_VOLUMES gives as ``bytes``; older csnapd: the origin's)."""
        if export.snapshot is None:
            return self.size
        size = export.snapshot.get("bytes")
        return size if isinstance(size, int) and size > 0 else self.size

    async def close(self) -> None:
        """Close every volume and the catalogue session."""
        for shared in list(self._shared.values()):
            if shared.ready.done() and not shared.ready.exception():
                await shared.ready.result().close()
        self._shared.clear()
        if self.catalogue is not None:
            await self.catalogue.close()
        self._check.close()

    # ------------------------------------------------------------------ catalogue

    async def snapshots(self) -> list[dict[str, Any]]:
        """Live (not squashed) snapshots, oldest first, fresh from csnapd."""
        assert self.catalogue is not None
        # read-only, so safe to resend: a failover is a pause for NBD clients, not an error
        reply = await self.catalogue.request(m.list_volumes, resend=True)
        snaps = reply["snapshots"]
        if not isinstance(snaps, list):
            return []
        return [s for s in snaps if isinstance(s, dict) and not s.get("squashed")]

    async def exports(self) -> list[Export]:
        """Every export: the origin first, then each live snapshot."""
        return [Export(ORIGIN, None)] + [Export(s["name"], s) for s in await self.snapshots()]

    async def resolve(self, name: str) -> Export | None:
        """The export called ``name``: "" or "origin", a snapshot name, or a snapshot tag."""
        if name in ("", ORIGIN):
            return Export(ORIGIN, None)
        snaps = await self.snapshots()
        for s in snaps:
            if s["name"] == name:
                return Export(s["name"], s)
        if name.isdigit():
            for s in snaps:
                if s["tag"] == int(name):
                    return Export(s["name"], s)
        return None

    async def contexts(self, export: Export) -> list[str]:
        """The metadata contexts an export offers."""
        names = [nbd.BASE_ALLOCATION, nbd.ALLOCATION_DEPTH]
        names += [nbd.DIRTY_BITMAP_PREFIX + s["name"] for s in await self.snapshots()
                  if export.is_origin or s["name"] != export.name]
        return names

    def flags(self, export: Export, structured: bool) -> int:
        """Transmission flags for ``export``."""
        flags = nbd.TF_HAS_FLAGS | nbd.TF_SEND_FLUSH | nbd.TF_CAN_MULTI_CONN
        if self.read_only:
            flags |= nbd.TF_READ_ONLY
        else:
            flags |= nbd.TF_SEND_FUA | nbd.TF_SEND_WRITE_ZEROES
        if structured:
            flags |= nbd.TF_SEND_DF
        return flags

    # ------------------------------------------------------------------ volumes

    async def acquire(self, export: Export) -> Volume:
        """The shared Volume of ``export`` (opened on first use); pair with release()."""
        shared = self._shared.get(export.key)
        if shared is None:
            fut: asyncio.Future[Volume] = asyncio.get_running_loop().create_future()
            shared = self._shared[export.key] = _Shared(export, fut)
            try:
                volume = await self._open_volume(export.name if export.snapshot is None
                                                 else export.snapshot["name"])
            except BaseException as exc:
                self._shared.pop(export.key, None)
                fut.set_exception(ExportError(f"cannot open {export.name!r}: {exc}"))
                fut.exception()  # consumed: waiters get it through ``await``
                raise ExportError(f"cannot open {export.name!r}: {exc}") from exc
            fut.set_result(volume)
            log.info("opened volume %s", export.name)
        shared.refs += 1
        try:
            return await asyncio.shield(shared.ready)
        except BaseException:
            shared.refs -= 1
            raise

    async def _open_volume(self, name: str) -> Volume:
        """Connect a session for volume ``name``.

        During a failover (some csnapd node answers, none leads yet) it waits for the
        leader, as the open sessions do, up to the reconnect timeout: an export opened
        then is a pause for the NBD client, not a refusal. Unreachable nodes and every
        other error fail at once.
        """
        limit = self.client_options.get("reconnect_timeout", 60.0) or 60.0
        deadline = time.monotonic() + limit
        delay = self.client_options.get("reconnect_delay", 0.05)
        while True:
            try:
                return await connect(self.host, self.port, name, origin=self.origin,
                                     store=self.store, io_threads=self.io_threads,
                                     **self.client_options)
            except (NotLeaderError, NoLeaderError) as exc:
                electing = isinstance(exc, NotLeaderError) or any(
                    isinstance(e, NotLeaderError) for _, e in exc.errors)
                if not electing or time.monotonic() + delay > deadline:
                    raise
                log.info("opening %s: no csnapd leader yet (%s); waiting", name, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.client_options.get("reconnect_max_delay", 2.0))

    async def release(self, volume: Volume) -> None:
        """Drop one reference; the last one closes the volume (flushing it first)."""
        for key, shared in list(self._shared.items()):
            if shared.ready.done() and not shared.ready.exception() \
                    and shared.ready.result() is volume:
                shared.refs -= 1
                if shared.refs <= 0:
                    del self._shared[key]
                    log.info("closing volume %s", shared.export.name)
                    try:
                        await volume.close()
                    except Exception as exc:  # noqa: BLE001 - closing anyway
                        log.warning("closing %s: %s", shared.export.name, exc)
                return

    async def open_session(self, export: Export, contexts: list[str]) -> Session:
        """Acquire the volumes an NBD connection needs for ``export`` and ``contexts``."""
        volume = await self.acquire(export)
        session = Session(export, volume, self.read_only or volume.read_only)
        try:
            for ctx in contexts:
                if ctx.startswith(nbd.DIRTY_BITMAP_PREFIX):
                    snap = await self.resolve(ctx[len(nbd.DIRTY_BITMAP_PREFIX):])
                    if snap is None or snap.is_origin:
                        raise ExportError(f"bitmap {ctx!r} vanished")
                    if export.is_origin:
                        session.bitmaps[ctx] = await self.acquire(snap)
                    else:
                        session.bases[ctx] = snap.name
        except BaseException:
            await self.close_session(session)
            raise
        session.contexts = {i + 1: ctx for i, ctx in enumerate(contexts)}
        return session

    async def close_session(self, session: Session) -> None:
        """Release everything ``open_session`` acquired."""
        for vol in session.bitmaps.values():
            await self.release(vol)
        session.bitmaps.clear()
        await self.release(session.volume)

    # ------------------------------------------------------------------ block status

    async def block_status(self, session: Session, context: str, offset: int, length: int,
                           one: bool) -> list[tuple[int, int]]:
        """Extents ``[(length, flags), ...]`` from ``offset`` for one context.

        Covers at most ``length`` bytes (fewer when the range spans more chunks than one
        QUERY_MAP may ask for; clients then ask again from where the answer stopped).
        """
        end = min(offset + length, session.size or self.size)
        if context == nbd.BASE_ALLOCATION or (context == nbd.ALLOCATION_DEPTH
                                               and session.export.is_origin):
            value = 0 if context == nbd.BASE_ALLOCATION else 1
            return [(min(end - offset, 0xFFFFFFFF), value)]
        if context in session.bases:
            return await self._changes(session, session.bases[context], offset, end, one)
        if context == nbd.ALLOCATION_DEPTH:
            owned, shared_value, volume = 1, 2, session.volume
        elif context in session.bitmaps:
            owned, shared_value, volume = nbd.STATE_DIRTY, 0, session.bitmaps[context]
        else:
            raise ExportError(f"unknown context {context!r}")
        cs = self.chunk_size
        first = offset // cs
        last = min((end - 1) // cs, first + self.max_chunks - 1)
        stop = min(end, (last + 1) * cs)
        reply = await volume.client.request(m.query_map, [[first, last - first + 1]],
                                            resend=True)  # read-only: rides a failover
        extents: list[tuple[int, int]] = []
        pos = offset
        for chunk, count, _store in reply["store"]:
            lo, hi = max(chunk * cs, offset), min((chunk + count) * cs, stop)
            if hi <= lo:
                continue
            if lo > pos:
                extents.append((lo - pos, shared_value))
            extents.append((hi - lo, owned))
            pos = hi
        if pos < stop:
            extents.append((stop - pos, shared_value))
        extents = nbd.merge_extents(extents)
        return extents[:1] if one else extents

    async def _changes(self, session: Session, base: str, offset: int, end: int, one: bool
                       ) -> list[tuple[int, int]]:
        """Dirty-bitmap extents of a snapshot export against snapshot ``base``: chunks
        whose copy differs (QUERY_CHANGES); may stop early where the server's answer did."""
        cs = self.chunk_size
        first, last = offset // cs, (end - 1) // cs
        reply = await session.volume.client.request(
            m.query_changes, base, first, last - first + 1, self.max_chunks, resend=True)
        stop = end if reply["next"] is None else min(end, reply["next"] * cs)
        extents: list[tuple[int, int]] = []
        pos = offset
        for chunk, count in reply["ranges"]:
            lo, hi = max(chunk * cs, offset), min((chunk + count) * cs, stop)
            if hi <= lo:
                continue
            if lo > pos:
                extents.append((lo - pos, 0))
            extents.append((hi - lo, nbd.STATE_DIRTY))
            pos = hi
        if pos < stop:
            extents.append((stop - pos, 0))
        extents = nbd.merge_extents(extents)
        return extents[:1] if one else extents
