"""The asyncio NBD server: negotiation and transmission for many concurrent connections.

Owns: listening (TCP or unix socket), the fixed-newstyle handshake and option haggling
(NBD_OPT_GO, INFO, EXPORT_NAME, LIST, ABORT, STRUCTURED_REPLY, LIST_META_CONTEXT,
SET_META_CONTEXT; everything else gets NBD_REP_ERR_UNSUP), and the transmission phase:
READ, WRITE (FUA), FLUSH, WRITE_ZEROES, BLOCK_STATUS and DISC.

Concurrency: each connection has one reader loop that parses request headers (and write
payloads) in order and starts one task per request, so many requests are in flight and
replies go out in completion order (the protocol allows it). A reply is written with
synchronous ``transport.write`` calls and no await in between, so replies never interleave
on the wire. Back-pressure: at most ``MAX_INFLIGHT`` requests and ``MAX_INFLIGHT_BYTES``
of payload per connection; the reader stops reading while over either limit, and while
more than ``WRITE_HIGH`` bytes of replies wait in the socket's write buffer.

The read fast path (why sequential reads are fast): a READ whose bytes the page cache
holds and that needs no metadata from csnapd (any origin read; a snapshot read of chunks
whose store address the volume already knows) is answered by the reader loop itself,
synchronously: ``Volume.read_cached`` reads with ``preadv(RWF_NOWAIT)`` straight into the
reply buffer behind its header, and one ``transport.write`` sends it. No task, no thread
hand-off, no copy. Every other READ takes the task path (``Volume.read_into``, the same
one-buffer reply). Likewise a WRITE without FUA to origin chunks the volume knows are
unique (``Volume.write_cached``: a plain pwrite to the page cache) is done and answered by
the reader loop.

Errors: a bad request (out of range, too large, unknown command or flag, write to a
read-only export, block status without contexts) gets its NBD error code and the
connection goes on; only protocol violations that make the byte stream unparseable (bad
request magic) drop the connection. Every connection is independent: one client's
misbehaviour never affects another's.

Uses :mod:`csnap_nbd.protocol` for bytes and :class:`csnap_nbd.exports.Gateway` for csnap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from typing import Any

from csnap_client.protocol import (
    ReadOnlyError,
    RemoteError,
    SnapshotDeletedError,
    SnapshotSquashedError,
    StoreFullError,
)

from . import protocol as nbd
from .exports import Export, ExportError, Gateway, Session

log = logging.getLogger("csnap_nbd")

MAX_PAYLOAD = 32 * 1024 * 1024  # largest READ/WRITE we accept (advertised maximum block size)
ZERO_PIECE = 4 * 1024 * 1024  # WRITE_ZEROES is written in pieces this large
MAX_INFLIGHT = 64  # requests in progress per connection
MAX_INFLIGHT_BYTES = 128 * 1024 * 1024  # read/write payload bytes in progress per connection
MAX_OPTIONS = 1024  # options one connection may send before it is dropped (denial of service)
WRITE_HIGH = 8 * 1024 * 1024  # reply bytes buffered per connection before the reader waits
SEND_BUFFER = 4 * 1024 * 1024  # SO_SNDBUF asked for each connection
INLINE_READ = 1024 * 1024  # largest READ the reader loop answers itself (the fast path)


class ReplyBuffers:
    """READ reply buffers of one connection, reused once the socket has taken their bytes.

    Why: a new ``bytearray`` is zero-filled (and often freshly mapped and faulted in) only
    to be overwritten by the read; for 256 KiB replies that was ~15% of the gateway's CPU.
    A buffer is taken back only when nothing but the caller refers to it (the caller
    checks the reference count before ``put``): the transport keeps a reference to a reply
    it could not send at once, and such a buffer is simply left to it. At most
    ``KEEP_BYTES`` are kept.
    """

    KEEP_BYTES = 8 * 1024 * 1024

    def __init__(self) -> None:
        self.free: dict[int, list[bytearray]] = {}
        self.kept = 0

    def get(self, size: int) -> bytearray | None:
        """A spare buffer of ``size`` bytes, or None (the caller makes a new one)."""
        spare = self.free.get(size)
        if not spare:
            return None
        self.kept -= size
        return spare.pop()

    def put(self, buf: bytearray) -> None:
        """Keep ``buf`` for a later reply of its size (the caller checked it is unused)."""
        if self.kept + len(buf) <= self.KEEP_BYTES:
            self.free.setdefault(len(buf), []).append(buf)
            self.kept += len(buf)


class Disconnect(Exception):
    """End the connection now (soft or hard disconnect)."""


class NbdServer:
    """Serves the gateway's exports to NBD clients."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.servers: list[asyncio.AbstractServer] = []
        self.connections: dict[Connection, asyncio.Task[Any]] = {}
        self.shutting_down = False

    async def listen_tcp(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """Listen on ``host:port``; returns the bound socket addresses."""
        server = await asyncio.start_server(self._accept, host, port, limit=1 << 20)
        self.servers.append(server)
        return [s.getsockname() for s in server.sockets]

    async def listen_unix(self, path: str) -> None:
        """Listen on the unix socket ``path`` (replacing a stale socket file)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        server = await asyncio.start_unix_server(self._accept, path, limit=1 << 20)
        self.servers.append(server)

    async def close(self) -> None:
        """Stop accepting, let connections finish what is in flight, then end them."""
        self.shutting_down = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            if conn.main is not None:
                conn.main.cancel()  # stops reading requests; cleanup() still runs
        if self.connections:
            await asyncio.gather(*self.connections.values(), return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock is not None:
            # Room for several read replies in the kernel: fewer partial sends and
            # writable-wakeups per reply (the kernel caps it at net.core.wmem_max).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        conn = Connection(self, reader, writer)
        self.connections[conn] = task
        conn.main = asyncio.ensure_future(conn.run())
        try:
            await conn.main
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - one connection's bug must not stop the server
            log.exception("connection %s failed", conn.peer)
        finally:
            try:
                await conn.cleanup()
            except Exception:  # noqa: BLE001 - never let one connection's cleanup escape
                log.exception("connection %s cleanup failed", conn.peer)
            finally:
                self.connections.pop(conn, None)


class Connection:
    """One NBD client connection: negotiation state, then the transmission loop."""

    def __init__(self, server: NbdServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.gateway = server.gateway
        self.reader, self.writer = reader, writer
        self.peer = writer.get_extra_info("peername") or "unix"
        self.no_zeroes = False
        self.structured = False
        self.meta_export: str | None = None  # export name of the last SET_META_CONTEXT
        self.meta_contexts: list[str] = []
        self.session: Session | None = None
        self.main: asyncio.Task[None] | None = None  # run(): negotiation + request reader
        self.flags = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.inflight_bytes = 0
        self.slots = asyncio.Semaphore(MAX_INFLIGHT)
        self.room = asyncio.Event()
        self.room.set()
        self._allowed: dict[int, int] = {}  # see _allowed_flags(), set for transmission
        self.buffers = ReplyBuffers()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Handshake, option haggling, then transmission until DISC or disconnect."""
        self.writer.write(nbd.handshake())
        (client_flags,) = nbd.U32.unpack(await self.reader.readexactly(4))
        if client_flags & ~nbd.KNOWN_CLIENT_FLAGS:
            log.info("%s: unknown client flags %#x; dropping", self.peer, client_flags)
            return
        self.no_zeroes = bool(client_flags & nbd.FLAG_C_NO_ZEROES)
        if not await self.negotiate():
            return
        await self.transmission()

    async def cleanup(self) -> None:
        """Wait for in-flight requests, release the volumes and close the socket."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            session, self.session = self.session, None
            try:
                await self.gateway.close_session(session)
            except Exception as exc:  # noqa: BLE001 - closing anyway
                log.warning("%s: releasing volumes: %s", self.peer, exc)
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    # ------------------------------------------------------------------ negotiation

    async def negotiate(self) -> bool:
        """Option haggling; True once transmission begins, False to end the connection."""
        for _ in range(MAX_OPTIONS):
            magic, option, length = nbd.OPTION_HEADER.unpack(
                await self.reader.readexactly(nbd.OPTION_HEADER.size))
            if magic != nbd.IHAVEOPT:
                log.info("%s: bad option magic %#x; dropping", self.peer, magic)
                return False
            if length > nbd.MAX_OPTION_DATA:
                await self._skip(length)
                self._send(nbd.option_error(option, nbd.REP_ERR_TOO_BIG,
                                            f"option data of {length} bytes is too large"))
                continue
            data = await self.reader.readexactly(length)
            try:
                done = await self.option(option, data)
            except nbd.OptionError as exc:
                self._send(nbd.option_error(option, exc.code, exc.text))
                continue
            except ExportError as exc:
                self._send(nbd.option_error(option, nbd.REP_ERR_UNKNOWN, str(exc)))
                continue
            except (RemoteError, ConnectionError, OSError) as exc:
                log.warning("%s: option %d failed: %s", self.peer, option, exc)
                self._send(nbd.option_error(option, nbd.REP_ERR_SHUTDOWN
                                            if self.server.shutting_down else nbd.REP_ERR_INVALID,
                                            f"csnap error: {exc}"))
                continue
            await self.writer.drain()
            if done is not None:
                return done
        log.info("%s: too many options; dropping", self.peer)
        return False

    async def option(self, option: int, data: bytes) -> bool | None:
        """Handle one option; returns True (transmission), False (end) or None (go on)."""
        if self.server.shutting_down and option != nbd.OPT_ABORT:
            raise nbd.OptionError(nbd.REP_ERR_SHUTDOWN, "server is shutting down")
        if option == nbd.OPT_ABORT:
            self._send(nbd.option_reply(option, nbd.REP_ACK))
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()
            return False
        if option == nbd.OPT_LIST:
            if data:
                raise nbd.OptionError(nbd.REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
            for export in await self.gateway.exports():
                self._send(nbd.rep_server(option, export.name, export.description))
            self._send(nbd.option_reply(option, nbd.REP_ACK))
            return None
        if option == nbd.OPT_STRUCTURED_REPLY:
            if data:
                raise nbd.OptionError(nbd.REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data")
            self.structured = True
            self._send(nbd.option_reply(option, nbd.REP_ACK))
            return None
        if option in (nbd.OPT_LIST_META_CONTEXT, nbd.OPT_SET_META_CONTEXT):
            return await self._meta_context(option, data)
        if option in (nbd.OPT_INFO, nbd.OPT_GO):
            return await self._info_go(option, data)
        if option == nbd.OPT_EXPORT_NAME:
            return await self._export_name(data)
        raise nbd.OptionError(nbd.REP_ERR_UNSUP, f"option {option} is not supported")

    async def _meta_context(self, option: int, data: bytes) -> None:
        setting = option == nbd.OPT_SET_META_CONTEXT
        if setting:
            self.meta_export, self.meta_contexts = None, []  # replaced even on failure
        if not self.structured:
            raise nbd.OptionError(nbd.REP_ERR_INVALID, "negotiate structured replies first")
        req = nbd.parse_meta_context_request(data)
        export = await self.gateway.resolve(req.name)
        if export is None:
            raise nbd.OptionError(nbd.REP_ERR_UNKNOWN, f"no export {req.name!r}")
        chosen = nbd.match_contexts(await self.gateway.contexts(export), req.queries,
                                    listing=not setting)
        for i, ctx in enumerate(chosen):
            self._send(nbd.rep_meta_context(option, i + 1 if setting else 0, ctx))
        if setting:
            self.meta_export, self.meta_contexts = req.name, chosen
        self._send(nbd.option_reply(option, nbd.REP_ACK))

    async def _resolve(self, name: str) -> Export:
        export = await self.gateway.resolve(name)
        if export is None:
            raise nbd.OptionError(nbd.REP_ERR_UNKNOWN, f"no export {name!r}; try NBD_OPT_LIST")
        return export

    async def _info_go(self, option: int, data: bytes) -> bool | None:
        req = nbd.parse_info_request(data)
        export = await self._resolve(req.name)
        flags = self.gateway.flags(export, self.structured)
        session = None
        if option == nbd.OPT_GO:
            contexts = self.meta_contexts if self.meta_export == req.name else []
            session = await self.gateway.open_session(export, contexts)
            if session.read_only:
                flags = (flags | nbd.TF_READ_ONLY) & ~(nbd.TF_SEND_FUA | nbd.TF_SEND_WRITE_ZEROES)
        size = self.gateway.export_size(export)
        if session is not None:
            session.size = size
        self._send(nbd.info_export(option, size, flags))
        if nbd.INFO_NAME in req.requests:
            self._send(nbd.info_string(option, nbd.INFO_NAME, export.name))
        if nbd.INFO_DESCRIPTION in req.requests:
            self._send(nbd.info_string(option, nbd.INFO_DESCRIPTION, export.description))
        # Sent even unasked: we accept any alignment (minimum 1), so clients that do not
        # understand it lose nothing; the maximum is what we really enforce.
        self._send(nbd.info_block_size(option, 1, max(512, min(self.gateway.chunk_size, 65536)),
                                       MAX_PAYLOAD))
        self._send(nbd.option_reply(option, nbd.REP_ACK))
        if session is None:
            return None
        self.session, self.flags = session, flags
        log.info("%s: using export %s (%d contexts)", self.peer, export.name,
                 len(session.contexts))
        return True

    async def _export_name(self, data: bytes) -> bool:
        try:
            name = data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        export = await self.gateway.resolve(name)
        if export is None:
            log.info("%s: NBD_OPT_EXPORT_NAME for unknown %r; dropping", self.peer, name)
            return False
        session = await self.gateway.open_session(export, [])
        flags = self.gateway.flags(export, self.structured)
        if session.read_only:
            flags = (flags | nbd.TF_READ_ONLY) & ~(nbd.TF_SEND_FUA | nbd.TF_SEND_WRITE_ZEROES)
        self.session, self.flags = session, flags
        session.size = self.gateway.export_size(export)
        self._send(nbd.export_name_reply(session.size, flags, self.no_zeroes))
        return True

    # ------------------------------------------------------------------ transmission

    async def transmission(self) -> None:
        """Read requests until DISC or EOF; each runs as its own task (but see
        :meth:`_read_inline`)."""
        reader = self.reader
        transport = self.writer.transport
        # Large limits: a stream of 64 KiB..256 KiB read replies must not pause the reader
        # (the default high-water mark is below one reply).
        transport.set_write_buffer_limits(high=WRITE_HIGH)
        self._allowed = self._allowed_flags()
        while True:
            header = await reader.readexactly(nbd.REQUEST_HEADER.size)
            try:
                req = nbd.parse_request(header)
            except ValueError as exc:
                log.info("%s: %s; dropping", self.peer, exc)
                return
            if req.type == nbd.CMD_READ and self._read_inline(req):
                if transport.get_write_buffer_size() > WRITE_HIGH:
                    await self.writer.drain()
                continue
            if req.type == nbd.CMD_DISC:
                return  # cleanup() waits for what is in flight, then closes
            payload: bytes | None = None
            if req.type == nbd.CMD_WRITE:
                if req.length > MAX_PAYLOAD:
                    await self._skip(req.length)
                    self._reply_error(req, nbd.EINVAL, f"write of {req.length} bytes exceeds "
                                      f"the maximum block size {MAX_PAYLOAD}")
                    await self.writer.drain()
                    continue
                await self._wait_room(req.length)
                payload = await reader.readexactly(req.length)
                if self._write_inline(req, payload):
                    self._done_bytes(req.length)
                    continue
            else:
                await self._wait_room(req.length if req.type == nbd.CMD_READ
                                      and req.length <= MAX_PAYLOAD else 0)
            await self.slots.acquire()
            task = asyncio.ensure_future(self._handle(req, payload))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _read_inline(self, req: nbd.Request) -> bool:
        """Answer a valid READ now if the page cache has it and csnapd is not needed.

        True when the reply is queued; False (nothing sent) when the request must take
        the task path: invalid, or data not cached, or metadata needed (those are decided
        there, with the error replies).
        """
        length = req.length
        if not 0 < length <= INLINE_READ or self._check(req)[0]:
            return False
        session = self.session
        assert session is not None
        reply, data = self._reply_buffer(req)
        done = session.volume.read_cached(req.offset, data)
        with contextlib.suppress(BufferError):  # still exported: then never recycled
            data.release()
        if done:
            self._write(reply)
        if sys.getrefcount(reply) == 2:  # this frame's name and the argument: unused
            self.buffers.put(reply)
        return done

    def _reply_buffer(self, req: nbd.Request) -> tuple[bytearray, memoryview]:
        """The reply buffer of a READ (a spare one if there is one) and its data view."""
        spare = self.buffers.get(nbd.read_reply_size(req.length, self.structured))
        return nbd.read_reply_buffer(req.cookie, req.offset, req.length, self.structured,
                                     spare)

    def _write_inline(self, req: nbd.Request, payload: bytes) -> bool:
        """Answer a valid WRITE now if the volume can write it without csnapd (origin
        chunks known unique) and it asks no flush (FUA). True when done and answered;
        False sends it down the task path (which writes it again if a pwrite failed here)."""
        if req.flags & nbd.CMD_FLAG_FUA or self._check(req)[0]:
            return False
        session = self.session
        assert session is not None
        try:
            if not session.volume.write_cached(req.offset, payload):
                return False
        except OSError:
            return False  # the task path writes it again and answers the error
        self._reply_ok(req)
        return True

    async def _wait_room(self, nbytes: int) -> None:
        """Back-pressure on payload bytes in flight (one huge request may always go)."""
        while self.inflight_bytes and self.inflight_bytes + nbytes > MAX_INFLIGHT_BYTES:
            self.room.clear()
            await self.room.wait()
        self.inflight_bytes += nbytes

    def _done_bytes(self, nbytes: int) -> None:
        self.inflight_bytes -= nbytes
        self.room.set()

    async def _handle(self, req: nbd.Request, payload: bytes | None) -> None:
        held = len(payload) if payload is not None else (
            req.length if req.type == nbd.CMD_READ and req.length <= MAX_PAYLOAD else 0)
        try:
            error, message = self._check(req)
            if error:
                self._reply_error(req, error, message)
            else:
                await self._execute(req, payload)
        except (SnapshotDeletedError, SnapshotSquashedError) as exc:
            self._reply_error(req, nbd.EIO, f"snapshot is gone: {exc}")
        except ReadOnlyError as exc:
            self._reply_error(req, nbd.EPERM, str(exc))
        except StoreFullError as exc:
            self._reply_error(req, nbd.ENOSPC, str(exc))
        except (RemoteError, ExportError, ConnectionError, OSError, ValueError) as exc:
            log.warning("%s: request type %d at %d+%d failed: %s", self.peer, req.type,
                        req.offset, req.length, exc)
            self._reply_error(req, nbd.ESHUTDOWN if self.server.shutting_down else nbd.EIO,
                              str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - answer the client, keep serving
            log.exception("%s: request failed", self.peer)
            self._reply_error(req, nbd.EIO, f"internal error: {exc}")
        finally:
            self._done_bytes(held)
            self.slots.release()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.writer.drain()

    def _check(self, req: nbd.Request) -> tuple[int, str]:
        """Validate a request before doing anything: (NBD error, message) or (0, "")."""
        size = self.session.size if self.session is not None else self.gateway.size
        typ, flags, off, length = req.type, req.flags, req.offset, req.length
        allowed = self._allowed
        if typ not in allowed:
            return nbd.EINVAL, f"command {typ} is not supported"
        if flags & ~allowed[typ]:
            return nbd.EINVAL, f"flags {flags:#x} are not valid for command {typ}"
        assert self.session is not None
        writing = typ in (nbd.CMD_WRITE, nbd.CMD_WRITE_ZEROES)
        if writing and self.session.read_only:
            return nbd.EPERM, "export is read-only"
        if typ == nbd.CMD_FLUSH:
            return 0, ""
        if typ == nbd.CMD_READ and length > MAX_PAYLOAD:
            return nbd.EINVAL, f"read of {length} bytes exceeds the maximum block size"
        if off > size or length > size - off:
            return (nbd.ENOSPC if writing else nbd.EINVAL,
                    f"range {off}+{length} is beyond the end of the export ({size} bytes)")
        if typ == nbd.CMD_BLOCK_STATUS:
            if not self.session.contexts:
                return nbd.EINVAL, "no metadata context was negotiated"
            if length == 0:
                return nbd.EINVAL, "block status of zero bytes"
        return 0, ""

    def _allowed_flags(self) -> dict[int, int]:
        """Command -> the request flags it accepts (fixed once transmission begins)."""
        return {nbd.CMD_READ: nbd.CMD_FLAG_FUA | (nbd.CMD_FLAG_DF if self.structured else 0),
                nbd.CMD_WRITE: nbd.CMD_FLAG_FUA,
                nbd.CMD_FLUSH: nbd.CMD_FLAG_FUA,
                nbd.CMD_WRITE_ZEROES: nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_NO_HOLE,
                nbd.CMD_BLOCK_STATUS: nbd.CMD_FLAG_FUA | nbd.CMD_FLAG_REQ_ONE}

    async def _execute(self, req: nbd.Request, payload: bytes | None) -> None:
        session = self.session
        assert session is not None
        vol = session.volume
        typ = req.type
        if typ == nbd.CMD_READ:
            if req.length == 0:
                self._reply_ok(req)
                return
            reply, data = self._reply_buffer(req)
            try:
                await vol.read_into(req.offset, data)
            finally:
                with contextlib.suppress(BufferError):  # still exported: never recycled
                    data.release()
            self._write(reply)
            if sys.getrefcount(reply) == 2:  # this frame's name and the argument: unused
                self.buffers.put(reply)
        elif typ == nbd.CMD_WRITE:
            assert payload is not None
            await vol.write(req.offset, payload)
            if req.flags & nbd.CMD_FLAG_FUA:
                await vol.flush()
            self._reply_ok(req)
        elif typ == nbd.CMD_WRITE_ZEROES:
            pos, end = req.offset, req.offset + req.length
            zeros = bytes(min(ZERO_PIECE, req.length))
            while pos < end:
                n = min(end - pos, len(zeros))
                await vol.write(pos, memoryview(zeros)[:n])
                pos += n
            if req.flags & nbd.CMD_FLAG_FUA:
                await vol.flush()
            self._reply_ok(req)
        elif typ == nbd.CMD_FLUSH:
            await vol.flush()
            self._reply_ok(req)
        elif typ == nbd.CMD_BLOCK_STATUS:
            await self._block_status(req, session)

    async def _block_status(self, req: nbd.Request, session: Session) -> None:
        one = bool(req.flags & nbd.CMD_FLAG_REQ_ONE)
        results = await asyncio.gather(*(
            self.gateway.block_status(session, ctx, req.offset, req.length, one)
            for ctx in session.contexts.values()))
        ids = list(session.contexts)
        out = [nbd.chunk_block_status(req.cookie, cid, extents, done=i == len(ids) - 1)
               for i, (cid, extents) in enumerate(zip(ids, results, strict=True))]
        self._write(b"".join(out))

    # ------------------------------------------------------------------ replies

    def _write(self, *parts: bytes | bytearray) -> None:
        """Queue one whole reply (no await between the parts: replies never interleave)."""
        transport = self.writer.transport
        if transport.is_closing():
            return
        for part in parts:
            self.writer.write(part)

    def _send(self, data: bytes) -> None:
        self.writer.write(data)

    def _reply_ok(self, req: nbd.Request) -> None:
        if self.structured:
            self._write(nbd.chunk_none(req.cookie))
        else:
            self._write(nbd.simple_reply(req.cookie))

    def _reply_error(self, req: nbd.Request, error: int, message: str) -> None:
        log.debug("%s: request %d type %d -> error %d: %s", self.peer, req.cookie, req.type,
                  error, message)
        if self.structured:
            self._write(nbd.chunk_error(req.cookie, error, message))
        else:
            self._write(nbd.simple_reply(req.cookie, error))

    async def _skip(self, length: int) -> None:
        """Read and discard ``length`` bytes (an oversized option or write payload)."""
        while length > 0:
            chunk = await self.reader.readexactly(min(length, 1 << 20))
            length -= len(chunk)
