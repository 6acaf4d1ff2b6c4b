"""nbd_bench: csnap-nbd throughput relative to qemu-nbd on a raw file, same tool, same run.

Measures ``nbdcopy`` (libnbd) moving SIZE bytes of random data:

* **origin write, first**: file -> csnap-nbd origin export, no snapshot (QUERY_WRITE per
  new chunk, then plain writes);
* **origin write, copy-out**: the same again after a snapshot was taken, so every chunk
  is copied to the store before it is overwritten;
* **snapshot read**: csnap-nbd snapshot export -> ``null:`` (every chunk now lives in the
  store);
* **origin read**: csnap-nbd origin export -> ``null:``;

and the same directions against ``qemu-nbd -f raw`` serving a plain file (the baseline).
Prints MiB/s for each and the ratio csnap / raw. Everything runs on loopback unix
sockets in a temporary directory that is removed afterwards.

Usage: ``.venv/bin/python tools/nbd_bench.py [--size 128M] [--chunk-size 64K] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from csnap_client.units import parse_size

BIN = Path(sys.executable).parent


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
    """Wait until csnapd accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"csnapd exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("csnapd did not start")


def free_port() -> int:
    """An unused loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy(src: str, dst: str) -> float:
    """Run nbdcopy; returns the elapsed seconds."""
    start = time.perf_counter()
    subprocess.run(["nbdcopy", src, dst], check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - start


def uri(sock: Path, export: str = "") -> str:
    """NBD URI of ``export`` on the unix socket ``sock``."""
    return f"nbd+unix:///{export}?socket={sock}"


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM a process we started and wait for it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench(tmp: Path, size: int, chunk_size: int) -> dict[str, dict[str, float]]:
    """Run every measurement; returns {name: {"csnap": MiB/s, "raw": MiB/s, "ratio": r}}."""
    data = tmp / "data.img"
    with open(data, "wb") as f:
        for _ in range(0, size, 8 << 20):
            f.write(os.urandom(8 << 20))
        f.truncate(size)
    procs: list[subprocess.Popen] = []
    try:
        # baseline: qemu-nbd on a raw file
        raw = tmp / "raw.img"
        with open(raw, "wb") as f:
            f.truncate(size)
        qsock = tmp / "qemu.sock"
        qemu = subprocess.Popen(["qemu-nbd", "-f", "raw", "-t", "-e", "16", "-k", str(qsock),
                                 str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(qemu)
        wait_socket(qsock, qemu)
        raw_write = copy(str(data), uri(qsock))
        raw_write2 = copy(str(data), uri(qsock))
        raw_read = copy(uri(qsock), "null:")

        # csnap: csnapd + csnap-nbd
        origin, store = tmp / "origin.img", tmp / "store.img"
        with open(origin, "wb") as f:
            f.truncate(size)
        with open(store, "wb") as f:
            f.truncate(size * 2 + (256 << 20))
        subprocess.run([str(BIN / "csnap-init"), "--store", str(store), "--origin", str(origin),
                        "--chunk-size", str(chunk_size), "--quiet"], check=True)
        port = free_port()
        log = open(tmp / "csnapd.log", "w")  # noqa: SIM115 - owned by the process
        csnapd = subprocess.Popen([str(BIN / "csnapd"), "--store", str(store), "--origin",
                                   str(origin), "--listen", f"127.0.0.1:{port}", "--control",
                                   str(tmp / "ctl.sock"), "--log-level", "warning"],
                                  stdout=log, stderr=log)
        procs.append(csnapd)
        # our own control socket, not the TCP port: another process may hold that port
        wait_socket(tmp / "ctl.sock", csnapd)
        wait_tcp(port, csnapd)
        nsock = tmp / "csnap-nbd.sock"
        nlog = open(tmp / "csnap-nbd.log", "w")  # noqa: SIM115 - owned by the process
        gateway = subprocess.Popen([str(BIN / "csnap-nbd"), "--server", f"127.0.0.1:{port}",
                                    "--origin", str(origin), "--store", str(store), "--unix",
                                    str(nsock), "--log-level", "warning"],
                                   stdout=nlog, stderr=nlog)
        procs.insert(0, gateway)
        wait_socket(nsock, gateway)
        cs_write = copy(str(data), uri(nsock, "origin"))
        subprocess.run([str(BIN / "csnapctl"), "--control", str(tmp / "ctl.sock"), "create",
                        "bench"], check=True, capture_output=True)
        cs_write2 = copy(str(data), uri(nsock, "origin"))
        cs_snap_read = copy(uri(nsock, "bench"), "null:")
        cs_origin_read = copy(uri(nsock, "origin"), "null:")
    finally:
        for p in procs:
            stop(p)
    mib = size / (1 << 20)

    def row(cs: float, base: float) -> dict[str, float]:
        return {"csnap_MiBps": round(mib / cs, 1), "raw_MiBps": round(mib / base, 1),
                "ratio": round(base / cs, 3)}

    return {"origin write (first)": row(cs_write, raw_write),
            "origin write (copy-out)": row(cs_write2, raw_write2),
            "snapshot read": row(cs_snap_read, raw_read),
            "origin read": row(cs_origin_read, raw_read)}


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the benchmark and print the table (or JSON)."""
    p = argparse.ArgumentParser(prog="nbd_bench", description=__doc__.split("\n")[0])
    p.add_argument("--size", default="128M", help="bytes to copy each time (default 128M)")
    p.add_argument("--chunk-size", default="64K", help="csnap chunk size (default 64K)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    for tool in ("nbdcopy", "qemu-nbd"):
        if shutil.which(tool) is None:
            print(f"nbd_bench: {tool} not found; run scripts/install-system-deps.sh",
                  file=sys.stderr)
            return 2
    size, chunk = parse_size(args.size), parse_size(args.chunk_size)
    with tempfile.TemporaryDirectory(prefix="csnap-nbd-bench-") as tmp:
        results = bench(Path(tmp), size, chunk)
    if args.json:
        print(json.dumps({"size": size, "chunk_size": chunk, "results": results}, indent=2))
        return 0
    print(f"nbdcopy, {size >> 20} MiB, csnap chunk {chunk >> 10} KiB; "
          f"baseline qemu-nbd -f raw on a file")
    print(f"{'measurement':26} {'csnap MiB/s':>12} {'raw MiB/s':>10} {'ratio':>7}")
    for name, r in results.items():
        print(f"{name:26} {r['csnap_MiBps']:12.1f} {r['raw_MiBps']:10.1f} {r['ratio']:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
