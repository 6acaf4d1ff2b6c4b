"""A read lock has a maximum hold time: a reader that never finishes cannot block writes."""

from __future__ import annotations

import time

from csnap_client.protocol import messages as m

from ..integration.conftest import make_server
from ..integration.test_server import _create


def test_pinging_reader_that_never_finishes_loses_its_lock(tmp_path):
    handle = make_server(tmp_path)
    handle.start("--lock-lease", "1")
    origin = handle.client("origin")
    _create(handle, origin, "s")
    reader = handle.client("s")
    read = reader.call(m.query_snapshot_read(0, [[0, 4]]))
    assert read["origin"] == [[0, 4]] and read["lease_ms"] == 1000
    wid = origin.send(m.query_write(0, [[1, 1]]))
    start = time.monotonic()
    done = None
    while time.monotonic() - start < 8:
        assert reader.call(m.ping(0))["op"] == "PONG"  # alive, but never finishes the read
        try:
            done = origin.wait_for(wid, timeout=0.2)
            break
        except TimeoutError:
            pass
    waited = time.monotonic() - start
    assert done is not None and done["op"] == "WRITE_OK", f"write still blocked after {waited:.1f}s"
    assert waited < 3.0
    assert reader.call(m.finish_snapshot_read(0, read["id"]))["valid"] is False
    # the re-read goes to the store copy made before the write proceeded
    again = reader.call(m.query_snapshot_read(0, [[1, 1]]))
    assert again["origin"] == [] and again["store"][0][:2] == [1, 1]
    assert handle.stop() == 0
