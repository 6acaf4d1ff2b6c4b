"""Shared-secret authentication: mutual HMAC-SHA256 challenge-response.

When the server is started with a secret, it opens every data connection with
CHALLENGE {nonce}.  The client answers with IDENTIFY carrying
``auth = {cnonce, mac}`` where ``mac = HMAC(secret, "csnap-client" | nonce |
cnonce | client_id | volume)``; the server proves itself back in IDENTIFY_OK
with ``auth = HMAC(secret, "csnap-server" | nonce | cnonce | client_id)``.
Different labels on the two sides stop a reflected MAC from passing; a fresh
server nonce per connection stops replay.  This authenticates the handshake
only: use TLS as well when the network itself is not trusted.

Pure: stdlib only, no I/O except ``read_secret``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

NONCE_BYTES = 32
MIN_SECRET_BYTES = 16


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def _mac(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    h = hmac.new(secret, label, hashlib.sha256)
    for part in parts:
        h.update(struct.pack(">I", len(part)))
        h.update(part)
    return h.digest()


def _volume_bytes(volume: str | int) -> bytes:
    return f"{type(volume).__name__}:{volume}".encode()


def client_proof(secret: bytes, nonce: bytes, cnonce: bytes, client_id: int,
                 volume: str | int) -> bytes:
    """The MAC a client sends in IDENTIFY."""
    return _mac(secret, b"csnap-client", nonce, cnonce, client_id.to_bytes(8, "big"),
                _volume_bytes(volume))


def server_proof(secret: bytes, nonce: bytes, cnonce: bytes, client_id: int) -> bytes:
    """The MAC a server sends back in IDENTIFY_OK."""
    return _mac(secret, b"csnap-server", nonce, cnonce, client_id.to_bytes(8, "big"))


def verify(expected: bytes, given: object) -> bool:
    """Constant-time comparison that tolerates a wrongly typed ``given``."""
    return isinstance(given, bytes) and hmac.compare_digest(expected, given)


def read_secret(path: str) -> bytes:
    """The secret in ``path`` (surrounding whitespace stripped), at least 16 bytes."""
    with open(path, "rb") as f:
        secret = f.read().strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"secret in {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret
