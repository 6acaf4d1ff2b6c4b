"""Hostile input against a live csnapd: Hypothesis fuzzing of both sockets, plus regressions.

The fuzzer lives in ``csnap_soak/fuzz.py`` (its docstring lists the inputs and checks);
CI runs a fixed-seed sample, ``python -m csnap_soak.fuzz --examples N`` runs longer.
"""

from __future__ import annotations

import time

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnap_soak import fuzz as fuzz_server

from ..integration.conftest import run_tool

EXAMPLES = 600
SEED = 4


def test_snapshot_read_on_an_origin_connection_is_a_bad_request(server):
    """Regression (found by the fuzzer): this request crashed the server's store thread,
    so the process stayed up but never answered anything again."""
    origin = server.client("origin")
    reply = origin.call(m.query_snapshot_read(0, [[0, 1]]))
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.BAD_REQUEST, reply
    assert origin.call(m.ping(0))["op"] == "PONG"
    assert server.client("origin").call(m.ping(0))["op"] == "PONG"


def test_fuzzed_sockets_never_kill_the_server(tmp_path, show_figure):
    target = fuzz_server.start_server(tmp_path)
    target.start_sentinel()
    start = time.monotonic()
    try:
        fuzz_server.fuzz(target, EXAMPLES, seed=SEED)
    finally:
        print(f"examples: {target.examples}, replies: "
              f"{dict(sorted(target.replies.items(), key=str))}, "
              f"{time.monotonic() - start:.0f} s")
        show_figure(target.figure())
    assert target.deaths == 0 and target.alive()
    assert target.inputs >= EXAMPLES
    # the fuzzer got past validation too, not only into error paths
    assert target.replies.get("PONG", 0) and target.replies.get("OK", 0)
    assert fuzz_server.stop_server(target, tmp_path) == 0
    check = run_tool("csnap-check", "--store", str(tmp_path / "store.img"), "--origin",
                     str(tmp_path / "origin.img"), check=False)
    assert check.returncode == 0, check.stdout
