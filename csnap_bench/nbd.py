"""NBD, client for client: csnap-nbd against qemu-nbd serving a qcow2 image, same run.

Both sides get the same plan, with 64 KiB chunks on csnap's side and 64 KiB clusters on
qcow2's (``qemu-img create -f qcow2 -o cluster_size=64k``), through the same tools:

1. fill: ``nbdcopy`` of random data into the volume (no snapshot yet);
2. a snapshot: ``csnapctl create`` / ``qemu-img snapshot -c`` (an internal snapshot);
3. first-touch writes, fio ``--ioengine=nbd``: 4 KiB writes, one per chunk/cluster
   (``rw=write:60k``), at QD1 over the first quarter of the volume and at QD16 over the next
   half: every write needs a copy-out (csnap) or a copy-on-write of the cluster (qcow2);
4. rewrites at QD16: fio random 4 KiB writes over the chunks step 3 touched (unique now);
5. sequential reads of the origin (nbdcopy to ``null:``, fio 64 KiB reads at QD16);
6. sequential reads of the snapshot, the same way (``qemu-nbd -r -l SNAPSHOT`` on qcow2's
   side: an internal snapshot is served read-only by a qemu-nbd of its own);
7. an nbdcopy overwrite of the whole origin (copy-out of every chunk not yet copied).

The ratio is csnap / qcow2 (higher is better; >= 1.0 is the target for steps 3-6). qemu-nbd
runs with its default cache (writeback): qcow2's metadata updates are not flushed during the
jobs, while csnapd commits every copy-out durably before the gateway's write proceeds.
nbdcopy's fill, overwrite and origin read also run against ``qemu-nbd -f raw`` on a plain
file, as the floor (no snapshots at all). fio is optional: without it its rows are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .config import Config
from .harness import log
from .nbdtools import CsnapSide, Qcow2Side, RawSide, fio, missing_tools, nbdcopy

CHUNK = 64 << 10
WRITE = 4 << 10
#: The rows whose ratio csnap / qcow2 has a target of >= 1.0.
TARGET_ROWS = ("first_touch_qd1", "first_touch_qd16", "rewrite_qd16", "origin_read_nbdcopy",
               "origin_read_fio", "snapshot_read_nbdcopy", "snapshot_read_fio")


def run_side(side: Any, data: Path, size: int, seconds: int, use_fio: bool,
             work: Path) -> dict[str, dict[str, Any]]:
    """The plan of the module docstring against one side; figures by row."""
    mib = size / (1 << 20)
    clusters = size // CHUNK
    n1, n2 = clusters // 4, clusters // 2
    stride = f"write:{CHUNK - WRITE}"
    r: dict[str, dict[str, Any]] = {}

    def copy(name: str, src: str, dst: str) -> None:
        r[name] = {"MiBps": round(mib / nbdcopy(src, dst), 1), "tool": "nbdcopy"}

    def job(name: str, target: str, *args: Any, **kw: Any) -> None:
        if use_fio:
            r[name] = {**fio(target, *args, workdir=work, **kw), "tool": "fio"}

    side.start()
    try:
        copy("fill", str(data), side.origin())
        side.take_snapshot("bench")
        job("first_touch_qd1", side.origin(), stride, WRITE, 1, 0, n1 * CHUNK,
            io_size=n1 * WRITE)
        job("first_touch_qd16", side.origin(), stride, WRITE, 16, n1 * CHUNK, n2 * CHUNK,
            io_size=n2 * WRITE)
        job("rewrite_qd16", side.origin(), "randwrite", WRITE, 16, 0, (n1 + n2) * CHUNK,
            runtime=seconds)
        copy("origin_read_nbdcopy", side.origin(), "null:")
        job("origin_read_fio", side.origin(), "read", CHUNK, 16, 0, size)
        snap = side.snapshot()
        copy("snapshot_read_nbdcopy", snap, "null:")
        job("snapshot_read_fio", snap, "read", CHUNK, 16, 0, size)
        side.writable_again()
        copy("overwrite_nbdcopy", str(data), side.origin())
    finally:
        side.stop()
    return r


def raw_floor(data: Path, size: int, work: Path) -> dict[str, dict[str, Any]]:
    """nbdcopy against qemu-nbd on a plain raw file: fill, overwrite, read."""
    mib = size / (1 << 20)
    side = RawSide(work, size)
    side.start()
    try:
        fill = nbdcopy(str(data), side.origin())
        again = nbdcopy(str(data), side.origin())
        read = nbdcopy(side.origin(), "null:")
    finally:
        side.stop()
    return {"fill": {"MiBps": round(mib / fill, 1)},
            "overwrite_nbdcopy": {"MiBps": round(mib / again, 1)},
            "origin_read_nbdcopy": {"MiBps": round(mib / read, 1)}}


def compare(csnap: dict[str, dict[str, Any]], peer: dict[str, dict[str, Any]],
            raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows with both sides' figures and the ratios (IOPS for fio writes, MiB/s else)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, c in csnap.items():
        p = peer.get(name)
        if p is None:
            continue
        unit = "IOPS" if c["tool"] == "fio" and "read" not in name else "MiB/s"
        cv, pv = (c["iops"], p["iops"]) if unit == "IOPS" else (c["MiBps"], p["MiBps"])
        row = {"tool": c["tool"], "unit": unit, "csnap": cv, "qcow2": pv,
               "ratio": round(cv / pv, 3) if pv else None, "target": name in TARGET_ROWS}
        for key in ("p50_ms", "p99_ms"):
            if key in c:
                row[f"csnap_{key}"], row[f"qcow2_{key}"] = c[key], p[key]
        if name in raw:
            row["raw"] = raw[name]["MiBps"]
            row["ratio_to_raw"] = round(c["MiBps"] / raw[name]["MiBps"], 3)
        rows[name] = row
    return rows


def bench(work: Path, size: int, seconds: int) -> dict[str, Any]:
    """The whole comparison in ``work``; the report section."""
    use_fio = shutil.which("fio") is not None
    data = work / "data.img"
    with open(data, "wb") as f:
        for _ in range(0, size, 8 << 20):
            f.write(os.urandom(min(8 << 20, size)))
        f.truncate(size)
    sides = {}
    for key, side in (("csnap", CsnapSide(work / "csnap", size, CHUNK)),
                      ("qcow2", Qcow2Side(work / "qcow2", size, CHUNK))):
        side.tmp.mkdir()
        log(f"nbd: {side.name}")
        sides[key] = run_side(side, data, size, seconds, use_fio, side.tmp)
    (work / "raw").mkdir()
    raw = raw_floor(data, size, work / "raw")
    fio_version = (subprocess.run(["fio", "--version"], capture_output=True, text=True)
                   .stdout.strip() if use_fio else None)
    return {"bytes": size, "chunk_size": CHUNK, "cluster_size": CHUNK, "write_size": WRITE,
            "peer": "qemu-nbd -f qcow2 (cluster_size=64k, internal snapshot 'bench'; the "
                    "snapshot read through qemu-nbd -r -l bench)",
            "fio": fio_version or "not installed: fio rows skipped",
            "results": compare(sides["csnap"], sides["qcow2"], raw),
            "raw_floor": raw, "sides": sides}


def stage_nbd(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """The NBD comparison as a stage of csnap-bench (skipped when the tools are missing)."""
    missing = missing_tools(fio=False)
    if missing:
        out["nbd"] = {"skipped": f"{', '.join(missing)} not installed "
                                 "(scripts/install-system-deps.sh installs them)"}
        log(f"nbd: {out['nbd']['skipped']}")
        return
    work = tmp / "nbd"
    work.mkdir()
    try:
        out["nbd"] = bench(work, cfg.nbd_bytes, cfg.nbd_seconds)
    except (subprocess.CalledProcessError, RuntimeError, OSError) as exc:
        logs = {p.name: p.read_text(errors="replace")[-400:] for p in work.rglob("*.log")}
        detail = getattr(exc, "stderr", None)
        out["nbd"] = {"skipped": f"nbd benchmark failed: {exc} {detail or ''}".strip(),
                      "logs": logs}
        log(f"nbd stage failed: {exc}")
        return
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log("nbd ratios csnap-nbd / qemu-nbd qcow2: " + ", ".join(
        f"{k} {v['ratio']}" for k, v in out["nbd"]["results"].items()))
