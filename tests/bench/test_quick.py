"""csnap-bench --quick runs end to end and writes its JSON report.

Only the report's structure is checked: speed is measured by the benchmark, never asserted
in a timed test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from csnap_bench import report

BIN = Path(sys.executable).parent
COST_ROW = ("workload", "connections", "csnapd_cpu_us_per_query", "ideal_cpu_us_per_query",
            "cpu_ratio", "cpu_ratio_target", "csnapd_queries_per_s", "ideal_queries_per_s")
NBD_ROWS = ("first_touch_qd1", "first_touch_qd16", "rewrite_qd16", "origin_read_nbdcopy",
            "snapshot_read_nbdcopy")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([str(BIN / "csnap-bench"), "--quick", "--json", str(out),
                           "--dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=220)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    for key in ("version", "mode", "machine", "config", "baselines", "cost", "workloads",
                "group_commit", "scale", "qemu", "nbd", "stages", "targets", "elapsed_s"):
        assert key in doc, key
    assert doc["mode"] == "quick"

    # csnapd against the ideal server: 4 workloads x (16, 1) connections
    rows = {(r["workload"], r["connections"]): r for r in doc["cost"]["rows"]}
    assert set(rows) == {(w, c) for w in ("rewrite_unique", "exception_read", "origin_read",
                                          "first_touch") for c in (16, 1)}
    for row in rows.values():
        for key in COST_ROW:
            assert key in row, key
        assert row["ideal_write_bytes"] == 0
    for key in ("acked_ops_per_fsync", "write_bytes_per_copyout",
                "allocated_bytes_per_copyout", "ops_per_commit"):
        assert key in rows["first_touch", 16], key
    assert rows["rewrite_unique", 16]["copyouts"] == 0

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
    nbd = doc["nbd"]
    if "skipped" not in nbd:
        have = set(nbd["results"])
        assert {"origin_read_nbdcopy", "snapshot_read_nbdcopy"} <= have
        if not nbd["fio"].startswith("not installed"):
            assert set(NBD_ROWS) <= have
        for row in nbd["results"].values():
            assert {"csnap", "qcow2", "ratio", "unit", "tool", "target"} <= set(row)

    names = {t["target"] for t in doc["targets"]}
    assert {"cpu_per_query_rewrite_unique_16c", "cpu_per_query_first_touch_1c",
            "first_touch_ops_per_fsync_16c", "first_touch_store_bytes_per_copyout_16c",
            "lookup_rate_large_vs_10k", "worst_latency_during_delete",
            "first_touch_4k_16_clients"} <= names
    assert {t["group"] for t in doc["targets"]} == {"primary", "kept", "legacy"}
    assert "MET" in proc.stdout or "MISSED" in proc.stdout

    # an earlier report's headline figures beside this one's (--compare)
    report.print_comparison(doc, doc)
    shown = capsys.readouterr().out
    assert "cpu_ratio_first_touch_16c" in shown and "1.00x" in shown
    # a bad size is a usage error
    again = subprocess.run([str(BIN / "csnap-bench"), "--nbd-size", "lots"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2, again.stderr
