"""What csnap-receive remembers between runs, and the resume token it hands out.

The state file (JSON, replaced atomically) names the stream being received and its last
verified checkpoint: ``position`` (every byte of the diff before it is applied and durable
on the target) and ``chain`` (the digest value there). ``csnap-receive --token`` prints
the *resume token*: the same facts as one line of text, which ``csnap-send --resume``
turns into a stream starting at ``position``, as ZFS receive tokens do.

Token: ``base64url(msgpack {v: 1, stream, from, to, pos, chain} || crc32c:u32be)``, no
padding. The CRC catches a token mangled in copy and paste.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import crc32c
import msgpack


class TokenError(ValueError):
    """Not a resume token (mangled, truncated, or of another version)."""


@dataclass(slots=True)
class Progress:
    """One stream's progress on a target."""

    stream: bytes
    from_snap: str | None
    to_snap: str
    size: int
    chunk_size: int
    position: int
    chain: bytes
    target: str = ""
    updated: float = 0.0

    def token(self) -> str:
        """The resume token for this progress."""
        body = msgpack.packb({"v": 1, "stream": self.stream, "from": self.from_snap,
                              "to": self.to_snap, "pos": self.position, "chain": self.chain},
                             use_bin_type=True)
        raw = body + struct.pack(">I", crc32c.crc32c(body))
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(slots=True)
class Token:
    """A decoded resume token."""

    stream: bytes
    from_snap: str | None
    to_snap: str
    position: int
    chain: bytes


def parse_token(text: str) -> Token:
    """Decode a resume token; TokenError if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("not a resume token (bad base64)") from None
    if len(raw) < 5 or struct.unpack(">I", raw[-4:])[0] != crc32c.crc32c(raw[:-4]):
        raise TokenError("not a resume token (checksum mismatch: mangled in copying?)")
    try:
        d = msgpack.unpackb(raw[:-4], raw=False)
        return Token(d["stream"], d["from"], d["to"], d["pos"], d["chain"]) \
            if d.get("v") == 1 else _bad()
    except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException):
        raise TokenError("not a resume token (unreadable)") from None


def _bad() -> Token:
    raise TokenError("resume token of an unknown version")


def default_state_dir() -> Path:
    """``$CSNAP_STATE_DIR``, else ``$XDG_STATE_HOME/csnap``, else ``~/.local/state/csnap``."""
    env = os.environ.get("CSNAP_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "csnap"


def state_path(target: str, directory: Path | None = None) -> Path:
    """The state file of a receive target (a readable name plus a hash of the key)."""
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", target)[-48:].strip("_") or "target"
    digest = hashlib.sha256(target.encode()).hexdigest()[:12]
    return (directory or default_state_dir()) / f"receive-{tag}-{digest}.json"


class StateFile:
    """Load, save (atomically, durably) and clear one target's progress."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Progress | None:
        """The recorded progress, or None if there is none."""
        try:
            d = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"unreadable receive state {self.path}: {exc}") from None
        d["stream"], d["chain"] = bytes.fromhex(d["stream"]), bytes.fromhex(d["chain"])
        return Progress(**d)

    def save(self, progress: Progress) -> None:
        """Replace the state file with ``progress`` (write, fsync, rename, fsync dir)."""
        progress.updated = time.time()
        d = asdict(progress)
        d["stream"], d["chain"] = progress.stream.hex(), progress.chain.hex()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(d, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def clear(self) -> None:
        """Forget the progress (the receive finished or was abandoned)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
