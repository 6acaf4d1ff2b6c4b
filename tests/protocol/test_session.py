"""The protocol sessions: states, local answers, bounds, and two sessions wired in memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from csnap_client.protocol import ErrorCode, Framer, auth, encode
from csnap_client.protocol import messages as m
from csnap_client.protocol.errors import RemoteProtocolError
from csnap_client.protocol.session import (
    NEED_DATA,
    PAUSED,
    ClientSession,
    Failed,
    Reply,
    Request,
    ServerSession,
    State,
    Unsolicited,
    Violation,
)


def replies(server: ServerSession) -> list[dict]:
    return Framer(max_frame_size=2 << 20).feed_many(server.data_to_send())


def events(server: ServerSession) -> list:
    out = []
    while isinstance(ev := server.next_event(), Request):
        out.append(ev)
    return out


def ident_ok(rid: int, chunks: int = 100) -> dict:
    return m.identify_ok(rid, chunk_size=4096, origin_chunks=chunks, origin_bytes=chunks * 4096,
                         store_uuid="u", server_epoch=1, lease_ms=1000)


def test_client_and_server_sessions_wired_in_memory():
    client, server = ClientSession(), ServerSession()
    wire = client.send(m.identify(1, 7, "origin", clean=True))
    wire += client.send(m.query_write(2, [[5, 2], [9, 1]]))  # pipelined behind IDENTIFY
    server.receive_data(wire)
    first = server.next_event()
    assert isinstance(first, Request) and first.op == "IDENTIFY" and server.state is State.IDENTIFYING
    assert server.next_event() is PAUSED  # the write waits for the IDENTIFY's answer
    server.send([ident_ok(1)])
    assert server.state is State.READY and server.limit == 100
    write = server.next_event()
    assert write.op == "QUERY_WRITE" and write.ranges == ((5, 2), (9, 1))
    assert server.next_event() is NEED_DATA
    server.send([m.write_ok(2)])
    evs = client.receive_data(server.data_to_send())
    assert [type(e) for e in evs] == [Reply, Reply]
    assert evs[1].request_op == "QUERY_WRITE" and not client.inflight and not server.inflight


def test_the_session_answers_what_it_can_alone():
    server = ServerSession(max_inflight=2)
    server.receive_data(encode(m.query_write(1, [[0, 1]])) + encode(m.ping(2)))
    assert events(server) == []
    assert [r["code"] for r in replies(server)] == [ErrorCode.NOT_IDENTIFIED] * 2
    server.receive_data(encode(m.identify(3, 7, "origin")))
    (ident,) = events(server)
    server.send([ident_ok(3, chunks=10)])
    server.receive_data(b"".join(encode(msg) for msg in (
        m.ping(4), m.identify(5, 7, "origin"), m.query_write(6, [[8, 3]]),
        m.query_write(7, [[0, 1]]), m.query_write(7, [[1, 1]]), m.query_write(8, [[2, 1]]),
        m.query_write(9, [[3, 1]]), {"op": "QUERY_WRITE", "id": 10})))
    forwarded = events(server)
    assert [(r.op, r.id) for r in forwarded] == [("QUERY_WRITE", 7), ("QUERY_WRITE", 8)]
    got = {r["id"]: (r["op"], r.get("code")) for r in replies(server)}
    assert got[3] == ("IDENTIFY_OK", None) and got[4] == ("PONG", None)
    assert got[5][1] == ErrorCode.ALREADY_IDENTIFIED and got[6][1] == ErrorCode.OUT_OF_RANGE
    assert got[7][1] == ErrorCode.DUPLICATE_ID and got[9][1] == ErrorCode.LIMIT_EXCEEDED
    assert got[10][1] == ErrorCode.BAD_REQUEST


def test_a_failed_identify_leaves_the_connection_unidentified():
    server = ServerSession()
    server.receive_data(encode(m.identify(1, 7, "nope")) + encode(m.ping(2)))
    assert [e.op for e in events(server)] == ["IDENTIFY"]
    server.send([m.reply_error(1, ErrorCode.UNKNOWN_SNAPSHOT, "no snapshot 'nope'")])
    assert server.state is State.WAITING
    assert events(server) == []
    assert [r.get("code") for r in replies(server)] == [ErrorCode.UNKNOWN_SNAPSHOT,
                                                        ErrorCode.NOT_IDENTIFIED]


def test_framing_error_closes_with_a_notice():
    server = ServerSession()
    server.receive_data(b"\x00\x00\x00\x00")
    assert server.closing and server.state is State.CLOSED
    (notice,) = replies(server)
    assert notice["id"] == 0 and notice["code"] == ErrorCode.BAD_REQUEST
    server.receive_data(encode(m.ping(1)))
    assert server.next_event() is NEED_DATA


def test_challenge_then_authenticated_identify():
    secret = b"s" * 32
    server = ServerSession(secret=secret)
    (challenge,) = replies(server)
    assert challenge["op"] == "CHALLENGE" and server.state is State.CHALLENGED
    cnonce = auth.new_nonce()
    mac = auth.client_proof(secret, challenge["nonce"], cnonce, 7, "origin")
    server.receive_data(encode(m.identify(1, 7, "origin", auth={"cnonce": cnonce, "mac": mac})))
    (ident,) = events(server)
    server.send([ident_ok(1)])
    (ok,) = replies(server)
    assert ok["auth"] == auth.server_proof(secret, challenge["nonce"], cnonce, 7)


def test_a_wrong_mac_closes_the_connection():
    server = ServerSession(secret=b"s" * 32)
    replies(server)
    server.receive_data(encode(m.identify(1, 7, "origin", auth={"cnonce": b"c", "mac": b"m"})))
    assert events(server) == [] and server.closing
    assert replies(server)[0]["code"] == ErrorCode.AUTH_FAILED


def test_client_checks_every_reply_against_its_request():
    client = ClientSession()
    client.send(m.ping(1))
    client.send(m.query_write(2, [[0, 1]]))
    data = b"".join(encode(msg) for msg in (
        m.write_ok(1), m.reply_error(2, ErrorCode.STORE_FULL, "full"),
        m.advice(3, "NEW_SNAPSHOT", "s", 1000), m.pong(99), {"op": "PONG", "id": "x"}))
    evs = client.receive_data(data)
    assert isinstance(evs[0], Failed) and isinstance(evs[0].error, RemoteProtocolError)
    assert isinstance(evs[1], Failed) and evs[1].error.code == ErrorCode.STORE_FULL
    assert isinstance(evs[2], Unsolicited) and evs[2].msg["op"] == "ADVICE"
    assert isinstance(evs[3], Reply) and evs[3].request_op == ""  # an orphan
    assert isinstance(evs[4], Violation) and not evs[4].fatal
    fatal = client.receive_data(b"\xff\xff\xff\xff")
    assert isinstance(fatal[0], Violation) and fatal[0].fatal


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_random_bytes_never_raise_anything(chunks, identified):
    """Fuzz invariant: random input becomes requests, local errors or a close, nothing else."""
    server = ServerSession(max_inflight=4)
    if identified:
        server.receive_data(encode(m.identify(1, 7, "origin")))
        events(server)
        server.send([ident_ok(1)])
    client = ClientSession()
    for data in chunks:
        server.receive_data(data)
        for ev in events(server):
            server.send([m.reply_error(ev.id, ErrorCode.INTERNAL, "x")])
        client.receive_data(data)
        server.data_to_send()
