"""A node that hangs up the moment it accepts (an HA node switching role closes every
connection, new ones included) must not cost the client its whole timeout.

Found by the failover soak: the close reached the client before its connect coroutine
took the connection up, so the loss was ignored and the IDENTIFY then waited 10 s for a
reply that could never come (about 2 takeovers in 100 took ~11.5 s instead of ~1.5 s).
"""

from __future__ import annotations

import socket
import struct
import threading
import time

from csnap_client.client import Client
from tests.integration.conftest import make_server


async def test_a_node_that_hangs_up_at_once_is_passed_over_quickly(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    closer_port = listener.getsockname()[1]
    stop = threading.Event()

    def hang_up() -> None:  # another thread: the close can beat the client's coroutine
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    closer = threading.Thread(target=hang_up, daemon=True)
    closer.start()
    srv = make_server(tmp_path)
    srv.start()
    try:
        for _ in range(20):
            client = Client("127.0.0.1", closer_port, "origin", timeout=10,
                            servers=[f"127.0.0.1:{srv.port}"])
            t0 = time.monotonic()
            await client.connect()
            took = time.monotonic() - t0
            assert client.address == f"127.0.0.1:{srv.port}"
            assert took < 3, f"connect took {took:.1f}s: the hang-up was not noticed"
            await client.close()
    finally:
        stop.set()
        closer.join(2)
        listener.close()
        srv.stop()
