"""Server addresses: ``host:port`` strings, IPv6 in brackets, and lists of them.

In high-availability mode several csnapd nodes serve one store and only the elected
leader answers; a client is given the addresses of all of them (``connect(...,
servers=[...])``, ``csnap-nbd --server h1:p1,h2:p2``) and finds the leader itself
(docs/protocol.md, "Failover"). These helpers are shared by the client library and the
command-line tools, so every tool accepts the same spellings:

* ``host:port``, ``1.2.3.4:port``, ``[::1]:port`` (write an IPv6 address in brackets; a
  bare ``::1:4270`` is read as host ``::1``, the last colon separating the port, as the
  tools always did);
* a comma list of those, blanks around commas ignored, duplicates dropped (first wins).

Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

Address = tuple[str, int]
"""``(host, port)``; an IPv6 host is stored without its brackets."""


def parse_address(text: str, what: str = "address") -> Address:
    """``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``; ValueError if malformed.

    ``what`` names the option in the error message (e.g. ``"--server"``).
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or "]" in host:
            host = ""
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"{what} must be HOST:PORT (port 1..65535), IPv6 as [ADDR]:PORT, "
                         f"not {text!r}")
    return host, int(port)


def format_address(address: Address) -> str:
    """``(host, port)`` -> ``"host:port"`` (``"[v6]:port"`` for an IPv6 host)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address_list(text: str, what: str = "address") -> list[Address]:
    """A comma list of addresses -> addresses in order, duplicates dropped.

    ValueError names the entry that is malformed, or says the list is empty.
    """
    entries = [e.strip() for e in text.split(",")]
    if not any(entries):
        raise ValueError(f"{what} must be HOST:PORT or a comma list of them, not {text!r}")
    return unique_addresses(parse_address(e, what) for e in entries if e)


def unique_addresses(addresses: Iterable[Address | str]) -> list[Address]:
    """Addresses (tuples or strings) in order, the first of each duplicate kept."""
    seen: list[Address] = []
    for a in addresses:
        addr = parse_address(a) if isinstance(a, str) else (a[0], int(a[1]))
        if addr not in seen:
            seen.append(addr)
    return seen
