"""Real etcd and real csnapd HA nodes on loopback, for the failover tests.

etcd (csnap_soak/hapair.py's, shared with the failover soak) runs with a 50 ms
heartbeat and a 500 ms election timeout so that it grants 1-second leases (its minimum
lease is 1.5 election timeouts); the nodes use ``--ha-lease 1`` so a takeover takes
about a second.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from csnap_client.protocol import messages as m
from csnap_soak.hapair import Etcd
from tests.integration.conftest import STARTED, ServerHandle, free_port, make_server

ETCD = shutil.which("etcd")
needs_etcd = pytest.mark.skipif(ETCD is None, reason="etcd is not installed "
                                "(scripts/install-system-deps.sh installs etcd-server)")
LEASE = 1.0


@pytest.fixture
def etcd(tmp_path: Path):
    if ETCD is None:
        pytest.skip("etcd is not installed")
    e = Etcd(tmp_path)
    e.start()
    yield e
    if e.proc is not None and e.proc.poll() is None:
        e.proc.send_signal(signal.SIGCONT)
        e.proc.kill()
        e.proc.wait()


class HAPair:
    """Two csnapd nodes on one store and origin, elected through ``etcd``."""

    def __init__(self, tmp: Path, etcd: Etcd, lease: float = LEASE, **init: str) -> None:
        first = make_server(tmp, **init)
        self.store, self.origin, self.chunk_size = first.store, first.origin, first.chunk_size
        self.nodes: dict[str, ServerHandle] = {}
        for name in ("n1", "n2"):
            d = tmp / name
            d.mkdir()
            h = first if name == "n1" else ServerHandle(d, first.store, first.origin, free_port(),
                                                        d / "ctl.sock", first.chunk_size)
            if name == "n1":
                h.tmp, h.control = d, d / "ctl.sock"
            else:
                STARTED.append(h)
            h.extra = ("--etcd", etcd.url, "--node", name, "--ha-lease", str(lease))
            self.nodes[name] = h

    def start(self) -> None:
        for h in self.nodes.values():
            h.start()

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.nodes[name].port}"

    def status(self, name: str, timeout: float = 5.0) -> dict:
        return self.nodes[name].ctl(m.status(1)) if timeout else {}

    def role(self, name: str) -> str:
        try:
            reply = self.status(name)
        except OSError:
            return "down"
        return (reply.get("result") or {}).get("role", "?")

    def wait_leader(self, timeout: float = 20.0, among: tuple[str, ...] = ("n1", "n2")) -> str:
        """The node that leads once one does (polls the control sockets)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in among:
                h = self.nodes[name]
                if h.proc is not None and h.proc.poll() is None and self.role(name) == "leader":
                    return name
            time.sleep(0.05)
        raise AssertionError("no leader elected: " + json.dumps(
            {n: self.nodes[n].log_text()[-3000:] for n in among}))

    def other(self, name: str) -> str:
        return "n2" if name == "n1" else "n1"

    def stop_all(self) -> None:
        for h in self.nodes.values():
            if h.proc is not None and h.proc.poll() is None:
                h.proc.send_signal(signal.SIGCONT)
                h.stop()


@pytest.fixture
def pair(tmp_path: Path, etcd: Etcd):
    p = HAPair(tmp_path, etcd)
    yield p
    p.stop_all()
