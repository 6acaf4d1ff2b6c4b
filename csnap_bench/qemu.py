"""qemu-img bench: first-touch 4 KiB writes into a qcow2 image with an internal snapshot.

A qcow2 image (64 KiB clusters) is filled, an internal snapshot is taken, then qemu-img
bench writes 4 KiB once per cluster (``-S 65536``: every write is a first touch needing a
copy-on-write), once with 16 requests in flight and no flush, once flushing every write.
Compared with csnap's 4 KiB first touch at 16 clients. Not like for like: qemu-img also
writes the data (csnap's client writes it after WRITE_OK), and it is one process.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .config import Config
from .harness import log

CLUSTER = 64 << 10


def stage_qemu(cfg: Config, tmp: Path, out: dict[str, Any]) -> None:
    """The qemu-img bench peer (skipped with a note when qemu-img is missing)."""
    qemu = shutil.which("qemu-img")
    if qemu is None:
        note = "qemu-img not found (scripts/install-system-deps.sh installs qemu-utils); skipped"
        log(note)
        out["qemu"] = {"skipped": note}
        return
    img = tmp / "peer.qcow2"
    n = cfg.qemu_writes
    try:
        subprocess.run([qemu, "create", "-q", "-f", "qcow2", "-o", f"cluster_size={CLUSTER}",
                        str(img), str(n * CLUSTER)], check=True)
        subprocess.run([qemu, "bench", "-f", "qcow2", "-w", "-q", "-c", str(n), "-s",
                        str(CLUSTER), "-d", "16", str(img)], check=True, capture_output=True)
        subprocess.run([qemu, "snapshot", "-c", "before", str(img)], check=True)
        results = {}
        for label, extra in (("no_flush", ["-d", "16"]),
                             ("flush_each", ["--flush-interval=1", "-d", "1"])):
            if label == "flush_each":
                subprocess.run([qemu, "snapshot", "-c", "again", str(img)], check=True)
            cmd = [qemu, "bench", "-f", "qcow2", "-w", "-q", "-c", str(n), "-s", "4096",
                   "-S", str(CLUSTER), *extra, str(img)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            el = time.perf_counter() - t0
            results[label] = {"writes": n, "seconds": round(el, 3),
                              "writes_per_s": round(n / el, 1), "command": " ".join(cmd)}
        ft = next((p for p in out["workloads"].get("first_touch_4k", [])
                   if p["clients"] == 16 and p["chunks_per_msg"] == 1), None)
        rate = ft["chunks_per_s"] if ft else 0.0
        version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
        out["qemu"] = {
            "qemu_img": version.splitlines()[0],
            "method": "qcow2 (64 KiB clusters) filled, internal snapshot, then 4 KiB writes "
                      "one per cluster (-S 65536: every write is a first touch needing a "
                      "COW); qemu-img bench is sequential, not random",
            **results,
            "csnap_first_touch_4k_16_clients_chunks_per_s": rate,
            "ratio_csnap_vs_qemu_no_flush": round(rate / results["no_flush"]["writes_per_s"], 3),
            "ratio_csnap_vs_qemu_flush_each": round(
                rate / results["flush_each"]["writes_per_s"], 3),
        }
        log(f"qemu-img bench: {results['no_flush']['writes_per_s']:.0f} first-touch writes/s "
            f"(no flush), {results['flush_each']['writes_per_s']:.0f}/s (flush each); csnap "
            f"{rate:.0f} durable/s")
    except subprocess.CalledProcessError as exc:
        out["qemu"] = {"skipped": f"qemu-img failed: {exc}"}
        log(f"qemu-img failed: {exc}")
    finally:
        img.unlink(missing_ok=True)
