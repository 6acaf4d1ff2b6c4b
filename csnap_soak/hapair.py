"""Two csnapd HA nodes on one store, elected through a real etcd, for the failover soak.

It has the interface of :class:`csnap_soak.daemon.Daemon` that the SIGKILL soak drives
(``init``, ``start``, ``kill``, ``stop``, ``ctl``, ``tail``), with failover meaning:
``kill`` SIGKILLs whichever node leads, ``start`` restarts every node that is down (as a
standby) and waits until a leader serves, ``ctl`` goes to the leader of the moment and
follows a failover. Clients reach the pair through ``servers``.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from csnap_soak.daemon import Daemon, free_port

#: etcd's minimum lease is 1.5 election timeouts: these settings let it grant 1 s leases.
ETCD_FLAGS = ("--heartbeat-interval", "50", "--election-timeout", "500")


class Etcd:
    """One etcd member on loopback in ``tmp/etcd-data``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port, self.peer = tmp, free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start etcd and wait until its client port answers (new ports if taken)."""
        etcd = shutil.which("etcd")
        if etcd is None:
            raise RuntimeError("etcd is not installed (scripts/install-system-deps.sh "
                               "installs the etcd-server package)")
        for _ in range(3):
            peer = f"http://127.0.0.1:{self.peer}"
            with open(self.tmp / "etcd.log", "a") as out:
                self.proc = subprocess.Popen(
                    [etcd, "--name", "soak", "--data-dir", str(self.tmp / "etcd-data"),
                     "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                     "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                     "--initial-cluster", f"soak={peer}", "--log-level", "warn",
                     *ETCD_FLAGS], stdout=out, stderr=out)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.05)
            if self.proc.poll() is None:
                break
            self.port, self.peer = free_port(), free_port()  # a port was taken meanwhile
        self.stop()
        raise RuntimeError("etcd did not start: " + (self.tmp / "etcd.log").read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


class HAPair:
    """Nodes ``n1`` and ``n2`` (see the module docstring)."""

    def __init__(self, tmp: Path, extra: tuple[str, ...] = (), lease: float = 1.0) -> None:
        self.tmp = tmp
        self.etcd = Etcd(tmp)
        self.nodes: dict[str, Daemon] = {}
        for name in ("n1", "n2"):
            d = tmp / name
            d.mkdir(parents=True, exist_ok=True)
            node = Daemon(tmp, (*extra, "--etcd", self.etcd.url, "--node", name,
                                "--ha-lease", str(lease)))
            node.control, node.log = d / "csnapd.sock", d / "csnapd.log"
            self.nodes[name] = node
        first = self.nodes["n1"]
        self.origin, self.store = first.origin, first.store
        self.leader = ""
        self.killed_at = 0.0

    @property
    def servers(self) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes.values()]

    @property
    def port(self) -> int:
        """The leader's port (the first node's before any is elected)."""
        return self.nodes[self.leader or "n1"].port

    def init(self, origin: bytes | int, store_bytes: int, chunk_size: int) -> None:
        self.nodes["n1"].init(origin, store_bytes, chunk_size)

    def start(self) -> float:
        """Start what is down, then wait for a leader; seconds since the kill (or start)."""
        t0 = self.killed_at or time.monotonic()
        if self.etcd.proc is None:
            self.etcd.start()
        for node in self.nodes.values():
            if node.proc is None or node.proc.poll() is not None:
                node.start()
        self.leader = self.wait_leader()
        self.killed_at = 0.0
        return time.monotonic() - t0

    def role(self, name: str) -> str:
        try:
            return self.nodes[name].ctl("status").get("role", "?")
        except (OSError, RuntimeError, ConnectionError):
            return "down"

    def wait_leader(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, node in self.nodes.items():
                if node.proc is not None and node.proc.poll() is None \
                        and self.role(name) == "leader":
                    return name
            time.sleep(0.02)
        raise RuntimeError("no leader elected:\n" + self.tail())

    def kill(self) -> None:
        """SIGKILL the leader (a crash of its host, as far as the store can tell)."""
        self.killed_at = time.monotonic()
        node = self.nodes[self.leader or self.wait_leader()]
        node.kill()
        self.leader = ""

    def stop(self) -> int:
        """SIGTERM the standby, then the leader; etcd last. The leader's exit code."""
        leader = self.leader or self.wait_leader()
        for name, node in self.nodes.items():
            if name != leader:
                node.stop()
        code = self.nodes[leader].stop()
        self.etcd.stop()
        return code

    def ctl(self, op: str, *args: Any) -> Any:
        """A control request on the leader, following a failover (up to 30 s)."""
        deadline = time.monotonic() + 30
        while True:
            name = self.leader or self.wait_leader()
            try:
                return self.nodes[name].ctl(op, *args)
            except (OSError, ConnectionError, RuntimeError) as exc:
                if "NOT_LEADER" not in str(exc) and "standby" not in str(exc) \
                        and not isinstance(exc, OSError | ConnectionError):
                    raise
                if time.monotonic() > deadline:
                    raise
                self.leader = ""
                time.sleep(0.05)

    def tail(self, n: int = 30) -> str:
        return "\n".join(f"--- {name}\n{node.tail(n)}" for name, node in self.nodes.items())

    def close(self) -> None:
        """Kill everything (after a failure)."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGCONT)
                node.kill()
        self.etcd.stop()
