"""Fixtures for the NBD gateway tests: a real csnapd (the integration fixtures) plus a
real csnap-nbd process, driven by real NBD clients (qemu-img, qemu-io, nbdinfo, nbdcopy).

The clients come from Debian packages installed by scripts/install-system-deps.sh; the
tests try that script once and skip (with the reason) only if the tools still are not
there afterwards.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import BIN, ServerHandle, free_port, run_tool, server  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo", "nbdcopy")
_install_tried: list[str] = []


def missing_tools() -> list[str]:
    """The NBD client tools not on PATH."""
    return [t for t in TOOLS if shutil.which(t) is None]


def require_tools() -> None:
    """Install the NBD clients once if needed; skip the test if that is impossible."""
    if missing_tools() and not _install_tried:
        proc = subprocess.run([str(ROOT / "scripts" / "install-system-deps.sh")],
                              capture_output=True, text=True, timeout=600)
        _install_tried.append(proc.stdout + proc.stderr)
    missing = missing_tools()
    if missing:
        pytest.skip(f"NBD client tools missing ({', '.join(missing)}) and "
                    f"scripts/install-system-deps.sh could not install them: "
                    f"{''.join(_install_tried).strip()[-300:]}")


@dataclass
class NbdGateway:
    """A csnap-nbd subprocess serving one csnapd."""

    server: ServerHandle
    socket_path: Path
    proc: subprocess.Popen
    log: Path
    tcp_port: int | None = None

    def uri(self, export: str = "origin") -> str:
        """The NBD URI of ``export`` (unix socket, or TCP when started with tcp=True)."""
        if self.tcp_port is not None:
            return f"nbd://127.0.0.1:{self.tcp_port}/{export}"
        return f"nbd+unix:///{export}?socket={self.socket_path}"

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"csnap-nbd did not stop: {self.log_text()}") from None
        return self.proc.returncode


def start_gateway(srv: ServerHandle, *extra: str, tcp: bool = False) -> NbdGateway:
    """Start csnap-nbd for the csnapd ``srv`` and wait until it accepts connections."""
    sock = srv.tmp / "nbd.sock"
    log = srv.tmp / f"csnap-nbd-{time.monotonic_ns()}.log"
    port = free_port() if tcp else None
    where = ["--listen", f"127.0.0.1:{port}"] if tcp else ["--unix", str(sock)]
    out = open(log, "w")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        [str(BIN / "csnap-nbd"), "--server", f"127.0.0.1:{srv.port}", "--origin",
         str(srv.origin), "--store", str(srv.store), "--log-level", "debug",
         *where, *extra], stdout=out, stderr=out)
    gw = NbdGateway(srv, sock, proc, log, port)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"csnap-nbd exited {proc.returncode}: {gw.log_text()}")
        try:
            if tcp:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            else:
                s = socket.socket(socket.AF_UNIX)
                s.connect(str(sock))
                s.close()
            return gw
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"csnap-nbd did not start: {gw.log_text()}")


@pytest.fixture
def gateway(server):  # noqa: F811 - the integration fixture, reused
    """csnap-nbd on a unix socket in front of the ``server`` fixture's csnapd."""
    require_tools()
    gw = start_gateway(server)
    yield gw
    assert gw.stop() == 0, gw.log_text()
    assert "Traceback" not in gw.log_text(), gw.log_text()


def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run an external tool; on failure the assertion shows its output."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def snapshot(srv: ServerHandle, name: str, *extra: str) -> None:
    """Create a snapshot with csnapctl (the gateway's origin sessions answer the advice)."""
    proc = run_tool("csnapctl", "--control", str(srv.control), "create", name, *extra)
    assert "created" in proc.stdout, proc.stdout


def delete_snapshot(srv: ServerHandle, name: str) -> None:
    """Delete a snapshot with csnapctl."""
    run_tool("csnapctl", "--control", str(srv.control), "delete", name)
