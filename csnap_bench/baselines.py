"""The machine and the in-run raw baselines: copy bandwidth, fdatasync rate, plain pwrite.

They run on the benchmark's own file system in the same run as the workloads, so every
figure of csnapd can be read against what the machine did at that moment.
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any


def machine_info(directory: Path) -> dict[str, Any]:
    """nproc, CPU model, memory, load, and the file system of the benchmark files."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    fs = ""
    try:
        out = subprocess.run(["df", "-T", str(directory)], capture_output=True, text=True)
        fs = out.stdout.splitlines()[-1]
    except (OSError, IndexError):
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_bytes": mem,
            "loadavg_at_start": list(os.getloadavg()),
            "python": platform.python_version(), "kernel": platform.release(),
            "filesystem": fs}


def busy_processes(limit: int = 5) -> list[str]:
    """The processes (other than this one) that used the most CPU over the last second:
    what else competed for the machine while the benchmark ran."""
    def ticks() -> dict[int, tuple[int, str]]:
        out: dict[int, tuple[int, str]] = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                stat = (d / "stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                out[int(d.name)] = (int(fields[11]) + int(fields[12]), comm)
            except (OSError, ValueError, IndexError):
                continue
        return out
    a = ticks()
    time.sleep(1.0)
    b = ticks()
    hz = os.sysconf("SC_CLK_TCK")
    used = sorted(((b[p][0] - a[p][0], p, b[p][1]) for p in b if p in a), reverse=True)
    return [f"{comm} (pid {pid}): {t / hz:.2f} cores" for t, pid, comm in used[:limit] if t]


def copy_mb_per_s(directory: Path, src: Path, chunk: int, seconds: float) -> float:
    """MB/s of chunk-by-chunk pread (from ``src``, the benchmark origin, in a region never
    written, as the server's copy-outs read it) + pwrite (to a fresh scratch file in the same
    directory) for ``seconds``, then one fdatasync, which is counted."""
    dst = directory / f"copy-{chunk}.scratch"
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(64):
                data = os.pread(sfd, chunk, (1 << 30) + done * chunk)
                os.pwrite(dfd, data, done * chunk)
                done += 1
        os.fdatasync(dfd)
        return done * chunk / (time.perf_counter() - t0) / 1e6
    finally:
        os.close(sfd)
        os.close(dfd)
        dst.unlink()


def fdatasync_per_s(directory: Path, seconds: float) -> float:
    """fdatasync calls per second (each after a 4 KiB pwrite) on the benchmark file system."""
    path = directory / "sync.scratch"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        buf, n, t0 = b"x" * 4096, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            os.pwrite(fd, buf, (n % 256) * 4096)
            os.fdatasync(fd)
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()


def pwrite_mb_per_s(path: Path, size: int, region: int, seconds: float
                    ) -> tuple[float, list[int]]:
    """MB/s of plain os.pwrite of ``size`` bytes at random aligned offsets in
    ``[0, region)`` of ``path`` (no sync: the client library's writes are not synced either);
    also returns the offsets used."""
    fd = os.open(path, os.O_RDWR)
    rng = random.Random(7)
    buf = os.urandom(size)
    offsets = [rng.randrange(region // size) * size for _ in range(4096)]
    try:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            os.pwrite(fd, buf, offsets[n % len(offsets)])
            n += 1
        return n * size / (time.perf_counter() - t0) / 1e6, offsets
    finally:
        os.close(fd)
