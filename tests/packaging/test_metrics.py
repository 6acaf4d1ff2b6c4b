"""A real csnapd with --metrics, scraped over HTTP while clients load it.

Depends on the daemon wiring (``--metrics`` in csnapd, ``RequestMetrics.observe``
in net/server.py); skipped while ``csnapd --help`` does not list ``--metrics``.
"""

from __future__ import annotations

import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from csnap_client.protocol import messages as m
from tests.integration.conftest import BIN, free_port, make_server, run_tool


def csnapd_has(flag: str) -> bool:
    proc = subprocess.run([str(BIN / "csnapd"), "--help"], capture_output=True, text=True,
                          timeout=60)
    return flag in proc.stdout


pytestmark = pytest.mark.skipif(not csnapd_has("--metrics"),
                                reason="csnapd has no --metrics yet (daemon wiring pending)")


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def get(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def create_snapshot(handle, origin, name: str) -> None:
    ctl = handle.control_client()
    rid = ctl.send(m.create_snapshot(0, name))
    advice = origin.recv()
    assert advice["op"] == "ADVICE"
    assert origin.call(m.ack_advice(0, advice["advice"]))["op"] == "ACK_OK"
    assert ctl.wait_for(rid)["op"] == "OK"
    ctl.close()


def test_counters_move_under_load(tmp_path):
    handle = make_server(tmp_path)
    mport = free_port()
    handle.start("--metrics", f"127.0.0.1:{mport}", "--lease", "1")
    try:
        before = scrape(mport)
        assert get(before, "csnap_store_free_chunks") > 0
        assert get(before, "csnap_copyouts_total") == 0
        origin = handle.client("origin")
        create_snapshot(handle, origin, "monday")
        rounds = []
        for r in range(4):
            ids = [origin.send(m.query_write(0, [[r * 64 + i, 1]])) for i in range(64)]
            replies = [origin.wait_for(rid) for rid in ids]
            assert all(x["op"] == "WRITE_OK" for x in replies), replies[:1]
            bad = origin.call(m.query_write(0, [[1 << 40, 1]]))  # beyond the origin
            assert bad["op"] == "ERROR"
            rounds.append(scrape(mport))
        for prev, cur in zip([before, *rounds], rounds, strict=False):
            for name in ("csnap_copyouts_total", "csnap_copied_bytes_total",
                         "csnap_journal_commits_total", "csnap_committed_operations_total",
                         "csnap_fsync_duration_seconds_count", "csnap_exceptions",
                         "csnap_store_used_chunks"):
                assert get(cur, name) > get(prev, name), name
            assert (get(cur, "csnap_requests_total", op="QUERY_WRITE", outcome="ok")
                    == get(prev, "csnap_requests_total", op="QUERY_WRITE", outcome="ok") + 64)
            assert (get(cur, "csnap_request_duration_seconds_count", op="QUERY_WRITE")
                    > get(prev, "csnap_request_duration_seconds_count", op="QUERY_WRITE"))
        last = rounds[-1]
        assert get(last, "csnap_copyouts_total") == 4 * 64
        assert get(last, "csnap_requests_total", op="QUERY_WRITE", outcome="out_of_range") == 4
        assert get(last, "csnap_snapshots") == 1
        assert get(last, "csnap_clients", volume="origin") == 1
        assert get(last, "csnap_store_free_chunks") < get(before, "csnap_store_free_chunks")
        assert 0 < get(last, "csnap_journal_fill_ratio") <= 1
        assert get(last, "csnap_journal_commit_operations_count") > 0
        origin.close()
    finally:
        code = handle.stop()
    assert code == 0, handle.log_text()
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout + check.stderr
