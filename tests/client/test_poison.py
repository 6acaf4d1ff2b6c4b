"""A request the server hangs up on every time is not resent forever."""

from __future__ import annotations

import asyncio
import time

import pytest

from csnap_client.client import QUICK_LOSS_LIMIT, ConnectionLostError

from .conftest import CS, count


async def test_a_request_the_server_always_hangs_up_on_fails_instead_of_looping(
        fake, open_volume):
    vol = await open_volume("origin")
    fake.hangup.add("QUERY_WRITE")
    t0 = time.monotonic()
    with pytest.raises(ConnectionLostError, match="not resending"):
        await asyncio.wait_for(vol.write(0, b"x" * CS), 30)
    # on the previous code: reconnect, resend, hang-up, with no pause, until the timeout
    assert count(fake, "QUERY_WRITE") <= QUICK_LOSS_LIMIT + 1
    assert time.monotonic() - t0 > 0.02 * (2 ** QUICK_LOSS_LIMIT - 2)  # it backed off
    fake.hangup.clear()
    await asyncio.wait_for(vol.write(0, b"y" * CS), 30)  # the session itself goes on
