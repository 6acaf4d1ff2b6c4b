"""The engine's view of connections: who is connected, as which client, to which volume.

The protocol state of a connection (challenge, identified, requests in flight) belongs to
its session (``csnap_client.protocol.session``); this table holds only what the engine
decides with: the client identity, the volume, and the last address a client came from.

Invariant: ``by_client[c]`` is the one open connection identified as client ``c``; a
client id identifies at most one connection (a second IDENTIFY drops the first).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class Conn:
    """One data or control connection."""

    id: int
    control: bool = False
    peer: str = ""
    privileged: bool = True  # control connections: may change snapshots or stop the server
    client_id: int | None = None  # set by a successful IDENTIFY
    slot: int | None = None  # snapshot slot; None: the origin (or not identified)
    snap_name: str = ""
    read_only: bool = False

    @property
    def identified(self) -> bool:
        return self.client_id is not None

    @property
    def origin(self) -> bool:
        """An identified origin connection."""
        return self.client_id is not None and self.slot is None and not self.control

    @property
    def volume(self) -> str:
        return self.snap_name or "origin"


class Conns:
    """Every open connection, by connection id and by client id."""

    def __init__(self) -> None:
        self.by_id: dict[int, Conn] = {}
        self.by_client: dict[int, int] = {}
        self.peers: dict[int, str] = {}  # client id -> address it last came from

    def open(self, conn_id: int, control: bool, peer: str, privileged: bool) -> Conn:
        conn = self.by_id[conn_id] = Conn(conn_id, control=control, peer=peer,
                                          privileged=privileged)
        return conn

    def get(self, conn_id: int) -> Conn | None:
        return self.by_id.get(conn_id)

    def close(self, conn_id: int) -> Conn | None:
        """Forget a connection; return it (None if unknown). Its client id is unbound."""
        conn = self.by_id.pop(conn_id, None)
        if conn is not None and conn.client_id is not None \
                and self.by_client.get(conn.client_id) == conn_id:
            del self.by_client[conn.client_id]
        return conn

    def bind(self, conn: Conn, client_id: int) -> int | None:
        """Identify ``conn`` as ``client_id``; return the connection it replaces, if any."""
        old = self.by_client.get(client_id)
        conn.client_id = client_id
        self.by_client[client_id] = conn.id
        self.peers[client_id] = conn.peer
        return old if old != conn.id else None

    def of_client(self, client_id: int) -> Conn | None:
        conn_id = self.by_client.get(client_id)
        return self.by_id.get(conn_id) if conn_id is not None else None

    def origin_conns(self) -> list[int]:
        """Ids of identified origin connections."""
        return [c.id for c in self.by_id.values() if c.origin]

    def of_slot(self, slot: int) -> list[int]:
        """Ids of connections serving snapshot ``slot``."""
        return [c.id for c in self.by_id.values() if c.slot == slot and not c.control]

    def identified(self) -> Iterator[Conn]:
        return (c for c in self.by_id.values() if c.identified)

    def __len__(self) -> int:
        return len(self.by_id)

    def values(self) -> Iterator[Conn]:
        return iter(self.by_id.values())
