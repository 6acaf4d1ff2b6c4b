"""An ADVICE that arrives during the handshake (between IDENTIFY_OK and the end of the
device check) is acknowledged once the session is up, not dropped.

Found by the failover soak: a client that connected to a new leader just as a snapshot
create began was counted in by the server but could not send its ack yet; the create
waited the full advice deadline (twice the lease) and then cut the client off.
"""

from __future__ import annotations

import asyncio
import threading
import time

from csnap_client.client import Client
from csnap_client.protocol import messages as m
from tests.integration.conftest import make_server


async def test_advice_during_the_handshake_is_acknowledged(tmp_path):
    srv = make_server(tmp_path)
    srv.start("--lease", "5")
    try:
        done: dict[str, float] = {}

        def create() -> None:
            t0 = time.monotonic()
            reply = srv.ctl(m.create_snapshot(1, "mid-handshake"))
            done["took"] = time.monotonic() - t0
            done["op"] = reply["op"]

        creator = threading.Thread(target=create)

        async def device_check(reply, call):  # noqa: ANN001, ANN202 - the hook's shape
            creator.start()  # the server now counts this connection in: it gets the ADVICE
            await asyncio.sleep(0.5)

        client = Client("127.0.0.1", srv.port, "origin", timeout=5)
        client.device_check = device_check
        await client.connect()
        await asyncio.get_running_loop().run_in_executor(None, creator.join, 15)
        assert "took" in done and done["op"] != "ERROR", done
        assert done["took"] < 3, f"the create waited {done['took']:.1f}s for our ack"
        assert client.connected and client.reconnects == 0
        await client.close()
    finally:
        srv.stop()
