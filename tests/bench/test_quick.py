"""csnap-bench --quick runs end to end and writes its JSON (the numbers are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([str(BIN / "csnap-bench"), "--quick", "--json", str(out),
                           "--dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=220)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    for key in ("version", "mode", "machine", "config", "baselines", "workloads",
                "group_commit", "scale", "qemu", "targets", "elapsed_s"):
        assert key in doc, key
    assert doc["mode"] == "quick"
    for wl in ("first_touch_4k", "first_touch_64k", "rewrite_unique_raw",
               "rewrite_cached_library", "snapshot_read", "snapshot_write_4k", "ping",
               "snapshot_count"):
        assert doc["workloads"][wl], wl
    point = doc["workloads"]["first_touch_4k"][0]
    for key in ("clients", "chunks_per_msg", "ops_per_s", "chunks_per_s", "mb_per_s",
                "p50_ms", "p99_ms", "server_cpu", "client_cpu"):
        assert key in point, key
    for key in ("copy_mb_per_s_4k", "copy_mb_per_s_64k", "fdatasync_per_s"):
        assert key in doc["baselines"], key
    assert "ops_per_commit" in doc["group_commit"]
    for key in ("small", "large", "lookup_ratio_large_vs_small"):
        assert key in doc["scale"], key
    assert "delete" in doc["scale"]["large"]
    assert "skipped" in doc["qemu"] or "no_flush" in doc["qemu"]
    assert {t["target"] for t in doc["targets"]} >= {
        "first_touch_4k_16_clients", "metadata_queries_1_chunk_16_clients",
        "acked_ops_per_fsync_16_clients", "worst_latency_during_delete"}
    assert "MET" in proc.stdout or "MISSED" in proc.stdout
