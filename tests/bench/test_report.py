"""Target verdicts of the report, on hand-made figures (no processes, no timing)."""

from __future__ import annotations

from csnap_bench import report


def _doc(**over):
    rows = [
        {"workload": "rewrite_unique", "connections": 16, "cpu_ratio": 1.9,
         "cpu_ratio_target": 2.0, "csnapd_cpu_us_per_query": 19, "ideal_cpu_us_per_query": 10},
        {"workload": "exception_read", "connections": 1, "cpu_ratio": 3.5,
         "cpu_ratio_target": 3.0, "csnapd_cpu_us_per_query": 35, "ideal_cpu_us_per_query": 10},
        {"workload": "first_touch", "connections": 16, "cpu_ratio": 5.0,
         "cpu_ratio_target": 6.0, "csnapd_cpu_us_per_query": 50, "ideal_cpu_us_per_query": 10,
         "acked_ops_per_fsync": 16.0, "ops_per_commit": 16.0,
         "write_bytes_per_copyout": 9000, "allocated_bytes_per_copyout": 4096},
    ]
    doc = {"cost": {"rows": rows}, "baselines": {}, "workloads": {}, "group_commit": {},
           "scale": {},
           "nbd": {"results": {
               "first_touch_qd1": {"target": True, "ratio": 1.0, "csnap": 2, "qcow2": 2,
                                   "unit": "IOPS", "tool": "fio"},
               "snapshot_read_fio": {"target": True, "ratio": 0.5, "csnap": 1, "qcow2": 2,
                                     "unit": "MiB/s", "tool": "fio"},
               "fill": {"target": False, "ratio": 0.1, "csnap": 1, "qcow2": 10,
                        "unit": "MiB/s", "tool": "nbdcopy"}}}}
    doc.update(over)
    return doc


def test_primary_verdicts_follow_the_thresholds():
    verdict = {t["target"]: t["met"] for t in report.evaluate_targets(_doc())
               if t["group"] == "primary"}
    assert verdict == {
        "cpu_per_query_rewrite_unique_16c": True,     # 1.9 <= 2.0
        "cpu_per_query_exception_read_1c": False,     # 3.5 > 3.0
        "cpu_per_query_first_touch_16c": True,
        "first_touch_ops_per_fsync_16c": True,        # 16 >= 16
        "first_touch_store_bytes_per_copyout_16c": False,  # 9000 > 8 KiB
        "nbd_first_touch_qd1": True,                  # 1.0 >= 1.0
        "nbd_snapshot_read_fio": False,
    }


def test_scale_targets_are_judged_only_at_full_size():
    def scale(exceptions, doomed, worst):
        return {"lookup_ratio_large_vs_small": 0.6,
                "large": {"exceptions": exceptions, "rss_bytes": 1, "cache_size_bytes": 1,
                          "delete": {"doomed_exceptions": doomed, "finished": True,
                                     "worst_latency_ms": worst, "delete_seconds": 1}}}
    small = {t["target"]: t["met"] for t in report.evaluate_targets(
        _doc(scale=scale(600_000, 300_000, 50)))}
    full = {t["target"]: t["met"] for t in report.evaluate_targets(
        _doc(scale=scale(10_000_000, 1_000_000, 150)))}
    assert small["lookup_rate_large_vs_10k"] is None
    assert small["worst_latency_during_delete"] is None
    assert full["lookup_rate_large_vs_10k"] is True
    assert full["worst_latency_during_delete"] is False


def test_headline_and_comparison(capsys):
    before, after = _doc(), _doc()
    after["cost"]["rows"][0] = {**after["cost"]["rows"][0], "cpu_ratio": 0.95}
    report.print_comparison(before, after)
    line = next(x for x in capsys.readouterr().out.splitlines()
                if "cpu_ratio_rewrite_unique_16c" in x)
    assert "1.9" in line and "0.95" in line and "0.50x" in line
