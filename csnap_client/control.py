"""Control-socket client: administer csnapd over its unix socket.

Owns: the administrative requests of docs/protocol.md section 5 (CREATE_SNAPSHOT,
DELETE_SNAPSHOT, LIST_SNAPSHOTS, STATUS, SHUTDOWN, FORGET_CLIENT, HOLD_SNAPSHOT,
RELEASE_SNAPSHOT, SET_SNAPSHOT). Same framing as the data connection,
no IDENTIFY. Every call returns the OK reply's ``result`` or raises the ERROR as a
:class:`~csnap_client.protocol.RemoteError` subclass.

Several calls may be in flight at once (replies are matched by id). Creating a snapshot
can take a while: the server answers only after every origin client acknowledged the
NEW_SNAPSHOT advice, so the default timeout here is generous.

Must not import csnapd.
"""

from __future__ import annotations

import asyncio
import os
from types import TracebackType
from typing import Any

from .protocol import (
    CATALOGUE,
    CONTROL_REPLIES,
    MAX_SERVER_FRAME,
    BadRequest,
    Framer,
    Message,
    RemoteProtocolError,
    create_snapshot,
    delete_snapshot,
    encode,
    error_from_reply,
    forget_client,
    grow,
    hold_snapshot,
    list_snapshots,
    release_snapshot,
    revert_snapshot,
    set_snapshot,
    shutdown,
    status,
    validate,
)


class ControlClient:
    """A connection to csnapd's control socket. Use :func:`open_control` or ``async with``."""

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = 120.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._framer = Framer(max_frame_size=MAX_SERVER_FRAME)
        self._pending: dict[int, tuple[str, asyncio.Future[Message]]] = {}
        self._next_id = 1
        self._reader_task: asyncio.Task[None] | None = None

    async def open(self) -> ControlClient:
        """Connect to the socket; raises OSError (e.g. FileNotFoundError) if impossible."""
        self._reader, self._writer = await asyncio.open_unix_connection(self.path)
        self._reader_task = asyncio.ensure_future(self._read_loop())
        return self

    async def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionError."""
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - ending anyway
                pass
        self._fail(ConnectionError("control connection closed"))

    async def __aenter__(self) -> ControlClient:
        if self._writer is None:
            await self.open()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests

    async def create(self, name: str, tag: int | None = None,
                     priority: int | None = None,
                     from_: str | int | None = None) -> dict[str, Any]:
        """Create snapshot ``name`` of the origin, or with ``from_`` a writable clone of that
        snapshot (its content at once; the server shares its copies in the background);
        returns its listing (name, tag, slot, created, priority, parent, ...)."""
        return await self.call(create_snapshot, name, tag, priority, from_)

    async def delete(self, name_or_tag: str | int) -> None:
        """Delete a snapshot by name or by int tag."""
        return await self.call(delete_snapshot, name_or_tag)

    async def list(self) -> list[dict[str, Any]]:
        """All snapshots: maps with at least ``name, tag, created, priority``."""
        return await self.call(list_snapshots)

    async def status(self) -> dict[str, Any]:
        """Server statistics (informational; keys may change between versions)."""
        return await self.call(status)

    async def shutdown(self) -> None:
        """Ask the server to shut down gracefully (returns before it has finished)."""
        return await self.call(shutdown)

    async def forget_client(self, client_id: int) -> dict[str, Any]:
        """Drop every grant of a disconnected client whose host is down or fenced.

        Only for a client that can never write again: until then the server keeps
        copying out, at each snapshot create, what it may still write.
        """
        return await self.call(forget_client, client_id)

    async def hold(self, name_or_tag: str | int) -> dict[str, Any]:
        """Add a hold: the snapshot is refused to delete and never squashed until released.

        Returns the snapshot as listed (``holds`` is its new count).
        """
        return await self.call(hold_snapshot, name_or_tag)

    async def release(self, name_or_tag: str | int) -> dict[str, Any]:
        """Take one hold away; refused (LIMIT_EXCEEDED) when the snapshot has none."""
        return await self.call(release_snapshot, name_or_tag)

    async def set(self, name_or_tag: str | int, name: str | None = None,
                  priority: int | None = None) -> dict[str, Any]:
        """Rename a snapshot and/or change its priority (both or neither happen)."""
        return await self.call(set_snapshot, name_or_tag, name, priority)

    async def grow(self, store: bool = False, origin: bool = False,
                   store_bytes: int | None = None,
                   origin_bytes: int | None = None) -> dict[str, Any]:
        """Take an enlarged store and/or origin device into use while clients keep working.

        Without sizes the whole device is used; shrinking is refused with the reason
        (BAD_REQUEST). Returns ``{"grown": [...], "store_bytes", "origin_bytes", ...}``
        once the new geometry is durable; origin clients then hear the new size.
        """
        return await self.call(grow, store, origin, store_bytes, origin_bytes)

    async def revert(self, name_or_tag: str | int) -> dict[str, Any]:
        """Make the origin equal to a snapshot, keeping every other snapshot as it is.

        Refused while origin clients are connected (the origin changes under them), and
        when the copy-outs it may need would not fit. Returns ``{"reverting_to", "tag"}``
        once the revert is recorded; it then runs in the background ('operations' in
        :meth:`status`), origin clients are refused until it is done, and a restart
        resumes it.
        """
        return await self.call(revert_snapshot, name_or_tag)

    async def call(self, build: Any, *args: Any) -> Any:
        """Send ``build(id, *args)``; return the OK ``result`` or raise the RemoteError."""
        if self._writer is None:
            raise ConnectionError("control connection is not open")
        rid = self._next_id
        self._next_id += 1
        msg = build(rid, *args)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[rid] = (msg["op"], fut)
        try:
            self._writer.write(encode(msg))
            await self._writer.drain()
            reply = await asyncio.wait_for(fut, self.timeout)
        finally:
            self._pending.pop(rid, None)
        return reply["result"]

    # ------------------------------------------------------------------ replies

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                for msg in self._framer.feed_many(data):
                    self._dispatch(msg)
            self._fail(ConnectionError("control socket closed by the server"))
        except RemoteProtocolError as exc:
            self._fail(exc)
        except OSError as exc:
            self._fail(ConnectionError(f"control socket error: {exc}"))

    def _dispatch(self, msg: Message) -> None:
        try:
            validate(msg, CONTROL_REPLIES)
        except BadRequest as exc:
            entry = self._pending.get(exc.request_id)
            if entry is not None and not entry[1].done():
                entry[1].set_exception(RemoteProtocolError(str(exc)))
            return
        entry = self._pending.get(msg["id"])
        if entry is None:
            return  # id 0 notices (e.g. SHUTTING_DOWN) or late replies
        op, fut = entry
        if fut.done():
            return
        if msg["op"] == "ERROR":
            fut.set_exception(error_from_reply(msg))
        elif msg["op"] not in CATALOGUE[op].replies:
            fut.set_exception(RemoteProtocolError(f"{msg['op']} is no answer to {op}"))
        else:
            fut.set_result(msg)

    def _fail(self, exc: BaseException) -> None:
        for _, fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)


async def open_control(path: str | os.PathLike[str], timeout: float | None = 120.0
                       ) -> ControlClient:
    """Connect to the control socket at ``path``; the caller closes it (or ``async with``)."""
    return await ControlClient(path, timeout).open()
