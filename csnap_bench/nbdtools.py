"""The programs of the NBD comparison: csnapd + csnap-nbd, qemu-nbd, fio and nbdcopy.

Each side of the comparison is an object with the same four steps (start writable, take a
snapshot, serve the snapshot, stop), so the measurement plan in csnap_bench.nbd runs
unchanged against csnap-nbd and against qemu-nbd. Everything runs on unix sockets in a
temporary directory; every process started here is stopped by its own handle.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness import free_port

BIN = Path(sys.executable).parent


def missing_tools(fio: bool = True) -> list[str]:
    """The programs the comparison needs that are not installed."""
    need = ["nbdcopy", "qemu-nbd", "qemu-img"] + (["fio"] if fio else [])
    return [t for t in need if shutil.which(t) is None]


def wait_socket(path: Path, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Wait until something accepts connections on the unix socket ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {path}")


def wait_tcp(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Wait until ``proc`` accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} did not start")


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    """Start a program with its output in ``log``."""
    with open(log, "ab") as f:
        return subprocess.Popen(args, stdout=f, stderr=f)


def stop(proc: subprocess.Popen | None) -> None:
    """SIGTERM a process started here and wait for it."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def uri(sock: Path, export: str = "") -> str:
    """NBD URI of ``export`` on the unix socket ``sock``."""
    return f"nbd+unix:///{export}?socket={sock}"


def nbdcopy(src: str, dst: str) -> float:
    """Run nbdcopy; returns the elapsed seconds."""
    start = time.perf_counter()
    subprocess.run(["nbdcopy", src, dst], check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def fio(target: str, rw: str, bs: int, iodepth: int, offset: int, size: int, *,
        io_size: int = 0, runtime: int = 0, workdir: Path) -> dict[str, Any]:
    """One fio job with the nbd engine; its figures for the job's direction.

    ``io_size`` bounds the bytes moved (with a strided ``rw`` such as ``write:60k`` it is the
    number of writes times ``bs``); ``runtime`` makes the job time based instead.
    """
    out = workdir / "fio.json"
    cmd = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={target}", f"--rw={rw}",
           f"--bs={bs}", f"--iodepth={iodepth}", f"--offset={offset}", f"--size={size}",
           "--randrepeat=1", "--output-format=json", f"--output={out}"]
    if io_size:
        cmd.append(f"--io_size={io_size}")
    if runtime:
        cmd += ["--time_based", f"--runtime={runtime}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    text = out.read_text()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    side = job["write" if "write" in rw else "read"]
    pct = side.get("clat_ns", {}).get("percentile", {})
    return {"iops": round(side["iops"], 1), "MiBps": round(side["bw_bytes"] / (1 << 20), 1),
            "ios": side["total_ios"],
            "p50_ms": round(pct.get("50.000000", 0) / 1e6, 3),
            "p99_ms": round(pct.get("99.000000", 0) / 1e6, 3),
            "command": " ".join(cmd[:-2])}


class CsnapSide:
    """csnapd on an origin and a store file, and csnap-nbd in front of it."""

    name = "csnap-nbd"

    def __init__(self, tmp: Path, size: int, chunk_size: int) -> None:
        self.tmp, self.size, self.chunk_size = tmp, size, chunk_size
        self.procs: list[subprocess.Popen] = []
        self.sock = tmp / "csnap-nbd.sock"
        self.ctl = tmp / "ctl.sock"
        self.snap = ""

    def start(self) -> None:
        """Make the files, start csnapd and the gateway."""
        origin, store = self.tmp / "origin.img", self.tmp / "store.img"
        with open(origin, "wb") as f:
            f.truncate(self.size)
        with open(store, "wb") as f:
            f.truncate(self.size * 2 + (256 << 20))
        subprocess.run([str(BIN / "csnap-init"), "--store", str(store), "--origin",
                        str(origin), "--chunk-size", str(self.chunk_size), "--quiet"],
                       check=True)
        port = free_port()
        csnapd = spawn([str(BIN / "csnapd"), "--store", str(store), "--origin", str(origin),
                        "--listen", f"127.0.0.1:{port}", "--control", str(self.ctl),
                        "--log-level", "warning"], self.tmp / "csnapd.log")
        self.procs.append(csnapd)
        wait_socket(self.ctl, csnapd)  # our own control socket: the port may be taken
        wait_tcp(port, csnapd)
        gateway = spawn([str(BIN / "csnap-nbd"), "--server", f"127.0.0.1:{port}", "--origin",
                         str(origin), "--store", str(store), "--unix", str(self.sock),
                         "--log-level", "warning"], self.tmp / "csnap-nbd.log")
        self.procs.insert(0, gateway)
        wait_socket(self.sock, gateway)

    def origin(self) -> str:
        """The origin export."""
        return uri(self.sock, "origin")

    def take_snapshot(self, name: str) -> None:
        """csnapctl create."""
        subprocess.run([str(BIN / "csnapctl"), "--control", str(self.ctl), "create", name],
                       check=True, capture_output=True)
        self.snap = name

    def snapshot(self) -> str:
        """The snapshot export (served by the same gateway)."""
        return uri(self.sock, self.snap)

    def writable_again(self) -> None:
        """Nothing to do: the origin export stayed writable."""

    def stop(self) -> None:
        """Stop the gateway, then csnapd."""
        for p in self.procs:
            stop(p)
        self.procs.clear()


class Qcow2Side:
    """qemu-nbd serving a qcow2 image; snapshots are qcow2 internal snapshots."""

    name = "qemu-nbd qcow2"

    def __init__(self, tmp: Path, size: int, cluster_size: int) -> None:
        self.tmp, self.size, self.cluster = tmp, size, cluster_size
        self.image = tmp / "peer.qcow2"
        self.sock = tmp / "qemu.sock"
        self.proc: subprocess.Popen | None = None
        self.snap = ""

    def _serve(self, *extra: str) -> None:
        self.sock.unlink(missing_ok=True)
        self.proc = spawn(["qemu-nbd", "-f", "qcow2", "-t", "-e", "16", *extra, "-k",
                           str(self.sock), str(self.image)], self.tmp / "qemu-nbd.log")
        wait_socket(self.sock, self.proc)

    def start(self) -> None:
        """qemu-img create (64 KiB clusters), then serve it writable."""
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                        f"cluster_size={self.cluster}", str(self.image), str(self.size)],
                       check=True)
        self._serve()

    def origin(self) -> str:
        """The image's active layer."""
        return uri(self.sock)

    def take_snapshot(self, name: str) -> None:
        """qemu-img snapshot -c needs the image closed: stop, snapshot, serve again."""
        stop(self.proc)
        subprocess.run(["qemu-img", "snapshot", "-c", name, str(self.image)], check=True)
        self.snap = name
        self._serve()

    def snapshot(self) -> str:
        """Serve the internal snapshot read-only (qemu-nbd -l; one writer or readers)."""
        stop(self.proc)
        self._serve("-r", "-l", self.snap)
        return uri(self.sock)

    def writable_again(self) -> None:
        """Back to the writable active layer."""
        stop(self.proc)
        self._serve()

    def stop(self) -> None:
        """Stop qemu-nbd."""
        stop(self.proc)
        self.proc = None


class RawSide:
    """qemu-nbd on a plain raw file: the floor for nbdcopy (no snapshots)."""

    name = "qemu-nbd raw"

    def __init__(self, tmp: Path, size: int) -> None:
        self.tmp, self.size = tmp, size
        self.sock = tmp / "raw.sock"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """A sparse raw file, served writable."""
        path = self.tmp / "raw.img"
        with open(path, "wb") as f:
            f.truncate(self.size)
        self.proc = spawn(["qemu-nbd", "-f", "raw", "-t", "-e", "16", "-k", str(self.sock),
                           str(path)], self.tmp / "qemu-raw.log")
        wait_socket(self.sock, self.proc)

    def origin(self) -> str:
        """The export."""
        return uri(self.sock)

    def stop(self) -> None:
        """Stop qemu-nbd."""
        stop(self.proc)
        self.proc = None
