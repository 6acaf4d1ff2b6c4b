"""Origin growth seen through csnap-nbd: new NBD connections get the new size, a snapshot
export keeps the size it was taken with (NBD cannot resize a connected client)."""

from __future__ import annotations

import time

from tests.integration.conftest import run_tool

from .conftest import run, snapshot

MiB = 1 << 20
SIZE = 4 * MiB  # the integration fixture's origin


def _size(uri: str) -> int:
    return int(run("nbdinfo", "--size", uri).stdout.strip())


def test_new_connections_see_the_grown_origin(gateway):
    srv = gateway.server
    snapshot(srv, "small")
    assert _size(gateway.uri("origin")) == SIZE
    with open(srv.origin, "r+b") as f:
        f.truncate(3 * SIZE)
    out = run_tool("csnapctl", "--control", str(srv.control), "grow", "--origin").stdout
    assert f"origin: grew from 4M to 12M ({3 * SIZE} bytes)" in out, out
    deadline = time.monotonic() + 10
    while _size(gateway.uri("origin")) != 3 * SIZE:  # the gateway hears RESIZED
        assert time.monotonic() < deadline, gateway.log_text()
        time.sleep(0.1)
    assert _size(gateway.uri("small")) == SIZE  # the snapshot keeps its size
    run("qemu-io", "-f", "raw", "-c", f"write -P 0x3c {3 * SIZE - 65536} 64k",
        gateway.uri("origin"))
    run("qemu-io", "-f", "raw", "-c", f"read -P 0x3c {3 * SIZE - 65536} 64k",
        gateway.uri("origin"))
    assert "grew from" in gateway.log_text()
