"""csnap-nbd byte by byte: bad input gets the right NBD error and the gateway keeps
serving; many requests in flight on one connection; the pure protocol helpers."""

from __future__ import annotations

import socket
import struct

import pytest

from csnap_nbd import protocol as nbd

from .conftest import snapshot, start_gateway

SIZE = 4 << 20


class Wire:
    """A minimal blocking NBD client that shows every byte the server sends."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        magic, opt, hflags = struct.unpack(">QQH", self.recv(18))
        assert (magic, opt) == (nbd.NBDMAGIC, nbd.IHAVEOPT)
        assert hflags & nbd.FLAG_FIXED_NEWSTYLE
        self.sock.sendall(struct.pack(">I", nbd.FLAG_C_FIXED_NEWSTYLE | nbd.FLAG_C_NO_ZEROES))
        self.structured = False

    def recv(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                raise ConnectionError("closed")
            buf += part
        return buf

    def option(self, opt: int, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Send an option; return its replies up to the final one."""
        self.sock.sendall(struct.pack(">QII", nbd.IHAVEOPT, opt, len(data)) + data)
        replies = []
        while True:
            magic, ropt, rtype, length = struct.unpack(">QIII", self.recv(20))
            assert magic == nbd.OPT_REPLY_MAGIC and ropt == opt
            replies.append((rtype, self.recv(length)))
            if rtype not in (nbd.REP_SERVER, nbd.REP_INFO, nbd.REP_META_CONTEXT):
                return replies

    def go(self, name: str, contexts: tuple[str, ...] = ()) -> int:
        """Optionally structured replies + contexts, then NBD_OPT_GO; the export flags."""
        if contexts:
            assert self.option(nbd.OPT_STRUCTURED_REPLY)[-1][0] == nbd.REP_ACK
            self.structured = True
            assert self.option(nbd.OPT_SET_META_CONTEXT, meta(name, contexts))[-1][0] \
                == nbd.REP_ACK
        raw = name.encode()
        replies = self.option(nbd.OPT_GO, struct.pack(">I", len(raw)) + raw
                              + struct.pack(">HH", 1, nbd.INFO_BLOCK_SIZE))
        assert replies[-1][0] == nbd.REP_ACK, replies
        info = next(d for t, d in replies if t == nbd.REP_INFO and d[:2] == b"\0\0")
        _, size, flags = struct.unpack(">HQH", info)
        assert size == SIZE
        return flags

    def request(self, typ: int, cookie: int, offset: int, length: int, flags: int = 0,
                payload: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">IHHQQI", nbd.REQUEST_MAGIC, flags, typ, cookie,
                                      offset, length) + payload)

    def simple_reply(self, expect_data: int = 0) -> tuple[int, int, bytes]:
        """(cookie, error, data) of a simple reply."""
        magic, error, cookie = struct.unpack(">IIQ", self.recv(16))
        assert magic == nbd.SIMPLE_REPLY_MAGIC
        return cookie, error, self.recv(expect_data) if not error and expect_data else b""

    def chunk(self) -> tuple[int, int, int, bytes]:
        """(cookie, flags, type, payload) of one structured reply chunk."""
        magic, flags, typ, cookie, length = struct.unpack(">IHHQI", self.recv(20))
        assert magic == nbd.STRUCTURED_REPLY_MAGIC
        return cookie, flags, typ, self.recv(length)

    def close(self) -> None:
        self.sock.close()


def meta(name: str, queries: tuple[str, ...]) -> bytes:
    raw = name.encode()
    out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q.encode())) + q.encode()
    return out


def test_options_bad_and_good(gateway):
    w = Wire(str(gateway.socket_path))
    assert w.option(99)[-1][0] == nbd.REP_ERR_UNSUP  # unknown option
    assert w.option(nbd.OPT_STARTTLS)[-1][0] == nbd.REP_ERR_UNSUP
    assert w.option(nbd.OPT_LIST, b"x")[-1][0] == nbd.REP_ERR_INVALID
    assert w.option(nbd.OPT_GO, b"\0\0")[-1][0] == nbd.REP_ERR_INVALID  # truncated
    assert w.option(nbd.OPT_GO, struct.pack(">I", 4) + b"nope" + b"\0\0")[-1][0] \
        == nbd.REP_ERR_UNKNOWN
    # meta contexts need structured replies first
    assert w.option(nbd.OPT_LIST_META_CONTEXT, meta("origin", ()))[-1][0] \
        == nbd.REP_ERR_INVALID
    assert w.option(nbd.OPT_STRUCTURED_REPLY)[-1][0] == nbd.REP_ACK
    listed = w.option(nbd.OPT_LIST_META_CONTEXT, meta("origin", ()))
    assert [d[4:].decode() for t, d in listed if t == nbd.REP_META_CONTEXT] == [
        "base:allocation", "qemu:allocation-depth"]
    assert w.option(nbd.OPT_LIST_META_CONTEXT, meta("nope", ()))[-1][0] == nbd.REP_ERR_UNKNOWN
    # unknown namespaces are ignored, wildcards only list
    chosen = w.option(nbd.OPT_SET_META_CONTEXT, meta("origin", ("x-foo:bar", "qemu:",
                                                                "base:allocation")))
    assert [d[4:].decode() for t, d in chosen if t == nbd.REP_META_CONTEXT] == [
        "base:allocation"]
    exports = w.option(nbd.OPT_LIST)
    assert [d[4:4 + struct.unpack(">I", d[:4])[0]] for t, d in exports
            if t == nbd.REP_SERVER] == [b"origin"]
    assert w.option(nbd.OPT_ABORT)[-1][0] == nbd.REP_ACK
    w.close()


def test_bad_requests_get_errors_and_the_gateway_keeps_serving(gateway):
    w = Wire(str(gateway.socket_path))
    flags = w.go("origin")
    assert flags & nbd.TF_SEND_FLUSH and flags & nbd.TF_SEND_FUA
    assert not flags & nbd.TF_READ_ONLY
    cases = [
        (nbd.CMD_READ, 0, SIZE - 10, 20, nbd.EINVAL),  # beyond the end
        (nbd.CMD_READ, 0, 0, 64 << 20, nbd.EINVAL),  # larger than the maximum block size
        (nbd.CMD_READ, nbd.CMD_FLAG_REQ_ONE, 0, 512, nbd.EINVAL),  # flag not for READ
        (42, 0, 0, 0, nbd.EINVAL),  # unknown command
        (nbd.CMD_TRIM, 0, 0, 4096, nbd.EINVAL),  # not advertised
        (nbd.CMD_BLOCK_STATUS, 0, 0, 4096, nbd.EINVAL),  # no context negotiated
        (nbd.CMD_WRITE_ZEROES, 0, SIZE, 1, nbd.ENOSPC),  # write beyond the end
        (nbd.CMD_WRITE_ZEROES, nbd.CMD_FLAG_FAST_ZERO, 0, 1, nbd.EINVAL),  # not advertised
    ]
    for cookie, (typ, fl, off, length, err) in enumerate(cases, 1):
        w.request(typ, cookie, off, length, fl)
        assert w.simple_reply() == (cookie, err, b""), (typ, fl, off, length)
    # an oversized write payload is skipped, not misread as the next request
    big = 33 << 20
    w.request(nbd.CMD_WRITE, 100, 0, big, payload=b"\x01" * big)
    assert w.simple_reply() == (100, nbd.EINVAL, b"")
    w.request(nbd.CMD_WRITE, 101, 4096, 5, nbd.CMD_FLAG_FUA, payload=b"hello")
    assert w.simple_reply() == (101, 0, b"")
    w.request(nbd.CMD_READ, 102, 4096, 5)
    assert w.simple_reply(5) == (102, 0, b"hello")
    w.request(nbd.CMD_FLUSH, 103, 0, 0)
    assert w.simple_reply() == (103, 0, b"")
    w.request(nbd.CMD_WRITE_ZEROES, 104, 4096, 3)
    assert w.simple_reply() == (104, 0, b"")
    w.request(nbd.CMD_READ, 105, 4096, 5)
    assert w.simple_reply(5) == (105, 0, b"\0\0\0lo")

    # a client that breaks the framing is dropped; others are unaffected
    rogue = Wire(str(gateway.socket_path))
    rogue.go("origin")
    rogue.sock.sendall(b"\xde\xad" * 14)
    with pytest.raises((ConnectionError, TimeoutError, OSError)):
        rogue.recv(1)
    rogue.close()
    w.request(nbd.CMD_READ, 106, 4096, 5)
    assert w.simple_reply(5) == (106, 0, b"\0\0\0lo")
    w.request(nbd.CMD_DISC, 107, 0, 0)
    assert w.sock.recv(1) == b""  # DISC: the server closes, no reply
    w.close()


def test_read_only_export_answers_eperm(server):
    from .conftest import require_tools
    require_tools()
    gw = start_gateway(server, "--read-only")
    try:
        w = Wire(str(gw.socket_path))
        flags = w.go("origin")
        assert flags & nbd.TF_READ_ONLY and not flags & nbd.TF_SEND_WRITE_ZEROES
        w.request(nbd.CMD_WRITE, 1, 0, 4, payload=b"nope")
        assert w.simple_reply() == (1, nbd.EPERM, b"")
        w.request(nbd.CMD_WRITE_ZEROES, 2, 0, 4)
        assert w.simple_reply() == (2, nbd.EPERM, b"")
        w.request(nbd.CMD_READ, 3, 0, 4)
        assert w.simple_reply(4) == (3, 0, b"\0\0\0\0")
        w.close()
    finally:
        assert gw.stop() == 0, gw.log_text()


def test_many_requests_in_flight_structured(gateway):
    w = Wire(str(gateway.socket_path))
    w.go("origin", ("base:allocation", "qemu:allocation-depth"))
    # pipeline 200 writes, then 200 reads and 20 block status queries, without waiting
    for i in range(200):
        w.request(nbd.CMD_WRITE, i + 1, i * 8192, 8192, payload=bytes([i % 251 + 1]) * 8192)
    done = set()
    for _ in range(200):
        cookie, flags, typ, payload = w.chunk()
        assert typ == nbd.REPLY_TYPE_NONE and flags & nbd.REPLY_FLAG_DONE
        done.add(cookie)
    assert done == set(range(1, 201))
    for i in range(200):
        w.request(nbd.CMD_READ, 1000 + i, i * 8192 + 100, 8000)
    for i in range(20):
        w.request(nbd.CMD_BLOCK_STATUS, 5000 + i, i * 4096, 1 << 20)
    reads: dict[int, bytes] = {}
    status: dict[int, list[bytes]] = {}
    order = []
    while len(reads) < 200 or sum(len(v) for v in status.values()) < 40:
        cookie, flags, typ, payload = w.chunk()
        order.append(cookie)
        if typ == nbd.REPLY_TYPE_OFFSET_DATA:
            (off,) = struct.unpack(">Q", payload[:8])
            assert off == (cookie - 1000) * 8192 + 100
            reads[cookie] = payload[8:]
        else:
            assert typ == nbd.REPLY_TYPE_BLOCK_STATUS, typ
            status.setdefault(cookie, []).append(payload)
    for cookie, data in reads.items():
        i = cookie - 1000
        assert data == bytes([i % 251 + 1]) * 8000
    for payloads in status.values():
        ids = sorted(struct.unpack(">I", p[:4])[0] for p in payloads)
        assert ids == [1, 2]
        for p in payloads:  # id 1 base:allocation (data), id 2 allocation-depth (origin: 1)
            cid, length, flags = struct.unpack(">III", p)
            assert (length, flags) == (1 << 20, 0 if cid == 1 else 1)
    # REQ_ONE: exactly one extent per context, within the request
    w.request(nbd.CMD_BLOCK_STATUS, 9000, 0, 4096, nbd.CMD_FLAG_REQ_ONE)
    for _ in range(2):
        _, _, typ, payload = w.chunk()
        assert typ == nbd.REPLY_TYPE_BLOCK_STATUS and len(payload) == 12
    # errors in structured mode come as error chunks
    w.request(nbd.CMD_BLOCK_STATUS, 9001, SIZE, 4096)
    cookie, flags, typ, payload = w.chunk()
    assert (cookie, typ) == (9001, nbd.REPLY_TYPE_ERROR) and flags & nbd.REPLY_FLAG_DONE
    assert struct.unpack(">I", payload[:4])[0] == nbd.EINVAL
    w.close()


def test_two_exports_share_nothing_but_the_server(gateway):
    a = Wire(str(gateway.socket_path))
    a.go("origin")
    a.request(nbd.CMD_WRITE, 1, 0, 4, payload=b"snap")
    assert a.simple_reply() == (1, 0, b"")
    snapshot(gateway.server, "s")
    b = Wire(str(gateway.socket_path))
    b.go("s")
    a.request(nbd.CMD_WRITE, 2, 0, 4, payload=b"orig")
    b.request(nbd.CMD_WRITE, 3, 4, 4, payload=b"shot")
    assert a.simple_reply() == (2, 0, b"")
    assert b.simple_reply() == (3, 0, b"")
    a.request(nbd.CMD_READ, 4, 0, 8)
    b.request(nbd.CMD_READ, 5, 0, 8)
    assert a.simple_reply(8) == (4, 0, b"orig\0\0\0\0")
    assert b.simple_reply(8) == (5, 0, b"snapshot")
    a.close()
    b.close()


def test_snapshot_reads_follow_writes_and_copy_outs(gateway):
    """The read fast paths keep a snapshot export exact: cached store addresses (read map,
    QUERY_MAP read-ahead), reads sharing one locked query, page-cache reads in the
    reader loop; a snapshot write that unshares a chunk and origin copy-outs after the
    snapshot's chunks were read are both seen."""
    cs = gateway.server.chunk_size
    a = Wire(str(gateway.socket_path))
    a.go("origin")
    a.request(nbd.CMD_WRITE, 1, 0, 4 * cs, payload=b"a" * (4 * cs))
    assert a.simple_reply() == (1, 0, b"")
    snapshot(gateway.server, "s1")
    snapshot(gateway.server, "s2")
    a.request(nbd.CMD_WRITE, 2, 0, 2 * cs, payload=b"b" * (2 * cs))  # copy-out, s1+s2 share
    assert a.simple_reply() == (2, 0, b"")
    b = Wire(str(gateway.socket_path))
    b.go("s2")
    chunks = 64
    for i in range(chunks):  # pipelined: reads share queries, the map is read ahead
        b.request(nbd.CMD_READ, 100 + i, i * cs, cs)
    got = dict(b.simple_reply(cs)[::2] for _ in range(chunks))
    for i in range(chunks):
        assert got[100 + i] == (b"a" if i < 4 else b"\0") * cs, i
    c = Wire(str(gateway.socket_path))  # same export, so the same volume as b
    c.go("s2")
    c.request(nbd.CMD_WRITE, 3, 100, 10, payload=b"c" * 10)  # unshares chunk 0 from s1
    assert c.simple_reply() == (3, 0, b"")
    a.request(nbd.CMD_WRITE, 4, 2 * cs, 2 * cs, payload=b"d" * (2 * cs))  # copy-out 2, 3
    assert a.simple_reply() == (4, 0, b"")
    for _ in range(2):  # twice: the second time from what the first one cached
        b.request(nbd.CMD_READ, 5, 0, 4 * cs)
        assert b.simple_reply(4 * cs) == (5, 0, b"a" * 100 + b"c" * 10 + b"a" * (4 * cs - 110))
    d = Wire(str(gateway.socket_path))
    d.go("s1")
    d.request(nbd.CMD_READ, 6, 0, 4 * cs)
    assert d.simple_reply(4 * cs) == (6, 0, b"a" * (4 * cs))
    a.request(nbd.CMD_READ, 7, 0, 4 * cs)
    assert a.simple_reply(4 * cs) == (7, 0, b"b" * (2 * cs) + b"d" * (2 * cs))
    for w in (a, b, c, d):
        w.close()


# ---------------------------------------------------------------------------- pure helpers


def test_parse_info_request():
    req = nbd.parse_info_request(struct.pack(">I", 3) + b"abc" + struct.pack(">HHH", 2, 3, 1))
    assert req == nbd.InfoRequest("abc", (3, 1))
    for bad in (b"", struct.pack(">I", 10) + b"abc\0\0", struct.pack(">I", 1) + b"\xff\0\0",
                struct.pack(">I", 1) + b"a" + struct.pack(">H", 2) + b"\0\0"):
        with pytest.raises(nbd.OptionError) as exc:
            nbd.parse_info_request(bad)
        assert exc.value.code == nbd.REP_ERR_INVALID


def test_parse_meta_context_request():
    assert nbd.parse_meta_context_request(meta("x", ("base:", "qemu:a"))) == \
        nbd.MetaContextRequest("x", ("base:", "qemu:a"))
    for bad in (b"\0\0\0\0", meta("x", ("a",))[:-1], meta("x", ()) + b"!"):
        with pytest.raises(nbd.OptionError):
            nbd.parse_meta_context_request(bad)


def test_match_contexts():
    avail = ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:a",
             "qemu:dirty-bitmap:b"]
    assert nbd.match_contexts(avail, (), listing=True) == avail
    assert nbd.match_contexts(avail, (), listing=False) == []
    assert nbd.match_contexts(avail, ("qemu:dirty-bitmap:",), listing=True) == avail[2:]
    assert nbd.match_contexts(avail, ("qemu:",), listing=False) == []
    assert nbd.match_contexts(avail, ("qemu:dirty-bitmap:b", "base:allocation",
                                      "base:allocation", "other:x"), listing=False) == [
        "qemu:dirty-bitmap:b", "base:allocation"]


def test_merge_extents():
    assert nbd.merge_extents([(1, 0), (2, 0), (0, 1), (3, 1), (4, 0)]) == [(3, 0), (3, 1),
                                                                           (4, 0)]
