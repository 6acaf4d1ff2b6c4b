"""csnap-nbd in front of an HA pair: an NBD client sees a pause, never an error, while
the leader is SIGKILLed in the middle of its copy (real nbdcopy, real csnapd nodes)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from csnap_client.protocol import messages as m
from tests.integration.conftest import BIN, run_tool

from .conftest import HAPair, needs_etcd

pytestmark = needs_etcd
SIZE = 32 << 20


@pytest.mark.skipif(shutil.which("nbdcopy") is None, reason="nbdcopy (libnbd-bin) missing")
def test_an_nbd_copy_pauses_across_a_failover_and_lands_whole(tmp_path, etcd):
    pair = HAPair(tmp_path, etcd, origin_size=SIZE, store_size=128 << 20)
    gw = None
    try:
        pair.start()
        leader = pair.wait_leader()
        # a snapshot first, so every chunk the copy writes needs a copy-out: only a
        # leader can approve it
        assert pair.nodes[leader].ctl(m.create_snapshot(1, "before"))["op"] != "ERROR"
        sock = tmp_path / "nbd.sock"
        log = open(tmp_path / "csnap-nbd.log", "w")  # noqa: SIM115 - owned by the process
        gw = subprocess.Popen(
            [str(BIN / "csnap-nbd"), "--server", ",".join(pair.address(n) for n in pair.nodes),
             "--origin", str(pair.origin), "--store", str(pair.store), "--unix", str(sock)],
            stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                break
            except OSError:
                time.sleep(0.05)
        source = tmp_path / "source.img"
        source.write_bytes(os.urandom(SIZE))
        uri = f"nbd+unix:///origin?socket={sock}"
        # one 64 KiB request at a time, each a copy-out the leader must commit: slow
        # enough that the kill lands in the middle
        copy = subprocess.Popen(["nbdcopy", "--connections", "1", "--requests", "1",
                                 "--request-size", "65536", str(source), uri], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        time.sleep(0.15)
        assert copy.poll() is None, "the copy ended before the kill; make it bigger"
        pair.nodes[leader].stop(signal.SIGKILL)
        out, _ = copy.communicate(timeout=120)
        assert copy.returncode == 0, out
        new = pair.wait_leader(among=(pair.other(leader),))
        back = tmp_path / "back.img"
        subprocess.run(["nbdcopy", uri, str(back)], check=True, timeout=120)
        assert back.read_bytes() == source.read_bytes()
        assert "before" in [s["name"] for s in pair.status(new)["result"]["snapshots"]]
    finally:
        if gw is not None:
            gw.send_signal(signal.SIGTERM)
            gw.wait(20)
        pair.stop_all()
    check = run_tool("csnap-check", "--store", str(pair.store), "--origin", str(pair.origin),
                     check=False)
    assert check.returncode == 0, check.stdout + check.stderr
