"""Shared-secret authentication, TLS, and identities that may not write."""

from __future__ import annotations

import asyncio
import socket

import pytest
import trustme

import csnap_client
from csnap_client.protocol import ErrorCode, Framer, auth, encode
from csnap_client.protocol import messages as m

from .conftest import RawClient, make_server

SECRET = b"correct horse battery staple 42"


@pytest.fixture
def secure(tmp_path):
    handle = make_server(tmp_path)
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    handle.start("--secret-file", str(tmp_path / "secret"))
    yield handle
    assert handle.stop() == 0


def _raw(handle) -> RawClient:
    return RawClient(socket.create_connection(("127.0.0.1", handle.port), timeout=10))


def test_client_with_the_secret_gets_in(secure):
    async def go() -> bytes:
        async with await csnap_client.connect("127.0.0.1", secure.port, volume="origin",
                                              origin=str(secure.origin), store=str(secure.store),
                                              secret=SECRET, reconnect=False) as vol:
            await vol.write(0, b"authenticated")
            return await vol.read(0, 13)
    assert asyncio.run(go()) == b"authenticated"


def test_without_or_with_a_wrong_secret_nothing_is_revealed(secure):
    plain = _raw(secure)
    challenge = plain.recv()
    assert challenge["op"] == "CHALLENGE" and len(challenge["nonce"]) == auth.NONCE_BYTES
    reply = plain.call(m.identify(0, 1, "origin"))
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.AUTH_FAILED
    assert set(reply) == {"op", "id", "code", "message"}
    with pytest.raises(ConnectionError):
        plain.recv(timeout=5)
    wrong = _raw(secure)
    nonce = wrong.recv()["nonce"]
    cnonce = auth.new_nonce()
    mac = auth.client_proof(b"not the secret at all!", nonce, cnonce, 2, "origin")
    reply = wrong.call(m.identify(0, 2, "origin", auth={"cnonce": cnonce, "mac": mac}))
    assert reply["code"] == ErrorCode.AUTH_FAILED
    # requests before authenticating are refused the same way
    early = _raw(secure)
    early.recv()
    assert early.call(m.ping(0))["code"] == ErrorCode.AUTH_FAILED

    async def go() -> None:
        await csnap_client.connect("127.0.0.1", secure.port, origin=str(secure.origin),
                                   secret=b"a wrong secret of some length", reconnect=False)
    with pytest.raises(csnap_client.RemoteError):
        asyncio.run(go())


def test_a_replayed_handshake_is_refused(secure):
    first = _raw(secure)
    nonce = first.recv()["nonce"]
    cnonce = auth.new_nonce()
    proof = {"cnonce": cnonce, "mac": auth.client_proof(SECRET, nonce, cnonce, 3, "origin")}
    ok = first.call(m.identify(0, 3, "origin", auth=proof))
    assert ok["op"] == "IDENTIFY_OK"
    assert ok["auth"] == auth.server_proof(SECRET, nonce, cnonce, 3)
    second = _raw(secure)
    second.recv()  # a fresh nonce: the old proof no longer fits
    assert second.call(m.identify(0, 3, "origin", auth=proof))["code"] == ErrorCode.AUTH_FAILED


def test_client_refuses_a_server_that_cannot_prove_the_secret(tmp_path):
    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode(m.challenge(auth.new_nonce())))
        framer = Framer()
        msgs = []
        while not msgs:
            msgs = framer.feed_many(await reader.read(65536))
        writer.write(encode(m.identify_ok(
            msgs[0]["id"], chunk_size=4096, origin_chunks=1, origin_bytes=4096,
            store_uuid="x", server_epoch=1, lease_ms=1000) | {"auth": b"\0" * 32}))
        await writer.drain()

    async def go() -> None:
        srv = await asyncio.start_server(impostor, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        origin = tmp_path / "o"
        origin.write_bytes(bytes(4096))
        try:
            await csnap_client.connect("127.0.0.1", port, origin=str(origin), secret=SECRET,
                                       reconnect=False, timeout=5)
        finally:
            srv.close()
    with pytest.raises(csnap_client.AuthenticationError):
        asyncio.run(go())


def test_tls(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    handle = make_server(tmp_path)
    handle.start("--tls-cert", str(tmp_path / "server.pem"), "--tls-key",
                 str(tmp_path / "server.pem"))

    async def go() -> bytes:
        ctx = __import__("ssl").create_default_context()
        ca.configure_trust(ctx)
        async with await csnap_client.connect("127.0.0.1", handle.port, origin=str(handle.origin),
                                              store=str(handle.store), ssl=ctx,
                                              reconnect=False) as vol:
            await vol.write(4096, b"over tls")
            return await vol.read(4096, 8)
    assert asyncio.run(go()) == b"over tls"
    plain = _raw(handle)
    plain.send(m.identify(0, 9, "origin"))
    with pytest.raises(ConnectionError):
        plain.recv(timeout=5)  # a TLS server does not speak plaintext
    assert handle.stop() == 0


def test_read_only_identity_cannot_write(server):
    ro = RawClient(socket.create_connection(("127.0.0.1", server.port)))
    assert ro.call(m.identify(0, 11, "origin", read_only=True))["op"] == "IDENTIFY_OK"
    reply = ro.call(m.query_write(0, [[0, 1]]))
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.READ_ONLY
