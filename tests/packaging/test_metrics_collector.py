"""The metrics collector against a real Engine over a store in a temporary file."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnapd.engine.service import Engine
from csnapd.metrics import (
    instrument_store,
    make_registry,
    outcome_of,
    parse_address,
    start_metrics_server,
)
from csnapd.store import create
from csnapd.store.device import FileDevice
from csnapd.store.paths import open_store

CS = 4096
CTL, ORIGIN, SNAP = 1, 2, 3


@pytest.fixture
def engine(tmp_path: Path):
    store_path, origin_path = tmp_path / "store.img", tmp_path / "origin.img"
    with open(origin_path, "wb") as f:
        f.truncate(1 << 20)
    with open(store_path, "wb") as f:
        f.truncate(8 << 20)
    dev = FileDevice(str(store_path))
    create.create(dev, 1 << 20, chunk_size=CS)
    dev.close()
    store = open_store(str(store_path), str(origin_path))
    eng = Engine(store, lock_lease=30.0)
    yield eng
    store.close()


def call(engine: Engine, conn: int, msg: dict, now: float = 1.0) -> list[dict]:
    engine.handle_message(conn, msg, now)
    return [reply for c, reply in engine.flush(now) if c == conn]


def test_collector_follows_the_engine(engine):
    registry, metrics = make_registry(engine)
    instrument_store(engine.store, metrics)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    free0 = value("csnap_store_free_chunks")
    assert free0 and value("csnap_store_chunks") > free0
    assert value("csnap_store_used_chunks") == value("csnap_store_chunks") - free0
    assert value("csnap_snapshots") == 0 and value("csnap_copyouts_total") == 0
    assert value("csnap_clients", volume="origin") == 0 and value("csnap_connections") == 0

    engine.open_conn(CTL, control=True)
    assert call(engine, CTL, m.create_snapshot(1, "monday"))[0]["op"] == "OK"
    assert value("csnap_snapshots") == 1
    engine.open_conn(ORIGIN)
    engine.open_conn(SNAP)
    assert call(engine, ORIGIN, m.identify(1, 101, "origin"))[0]["op"] == "IDENTIFY_OK"
    assert call(engine, SNAP, m.identify(1, 102, "monday"))[0]["op"] == "IDENTIFY_OK"
    assert value("csnap_clients", volume="origin") == 1
    assert value("csnap_clients", volume="snapshot") == 1
    assert value("csnap_connections") == 3

    # a snapshot reader holds chunks 0-3 of the origin ...
    read = call(engine, SNAP, m.query_snapshot_read(2, [[0, 4]]))[0]
    assert read["op"] == "SNAPSHOT_READ_OK", read
    assert value("csnap_read_locks_held") == 1
    assert value("csnap_read_locked_chunks") == 4
    # ... so an origin write there copies out, then waits for the lock
    commits = value("csnap_journal_commits_total")
    assert call(engine, ORIGIN, m.query_write(2, [[0, 4]])) == []
    assert value("csnap_waiting_origin_writes") == 1
    replies = call(engine, SNAP, m.finish_snapshot_read(3, read["id"]))
    assert replies[0]["op"] == "FINISH_OK"
    engine.flush(1.0)
    assert value("csnap_waiting_origin_writes") == 0
    assert value("csnap_read_locks_held") == 0
    assert value("csnap_copyouts_total") == 4
    assert value("csnap_copied_bytes_total") == 4 * CS
    assert value("csnap_exceptions") == 4
    assert value("csnap_store_free_chunks") <= free0 - 4
    assert value("csnap_journal_commits_total") > commits
    assert value("csnap_committed_operations_total") >= value("csnap_journal_commits_total")
    assert 0 < value("csnap_journal_fill_ratio") <= 1
    assert value("csnap_journal_used_blocks") > 0
    assert value("csnap_requests_received_total", op="QUERY_WRITE") == 1
    assert value("csnap_requests_received_total", op="IDENTIFY") == 2
    assert value("csnap_snapshots_squashed_total") == 0
    assert value("csnap_store_failed") == 0
    # the store hooks saw every flush and commit since they were installed
    assert value("csnap_fsync_duration_seconds_count") > 0
    assert value("csnap_journal_commit_operations_count") > 0
    assert value("csnap_journal_commit_operations_sum") >= 1

    engine.close_conn(SNAP, 2.0)
    assert value("csnap_clients", volume="snapshot") == 0


def test_space_metrics_per_snapshot_fill_and_time_to_full(engine):
    registry, _ = make_registry(engine)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    engine.open_conn(CTL, control=True)
    assert call(engine, CTL, m.create_snapshot(1, "monday"))[0]["op"] == "OK"
    assert call(engine, CTL, m.hold_snapshot(2, "monday"))[0]["op"] == "OK"
    engine.open_conn(ORIGIN)
    assert call(engine, ORIGIN, m.identify(1, 101, "origin"))[0]["op"] == "IDENTIFY_OK"
    assert value("csnap_store_time_to_full_seconds") == float("inf")
    engine.tick(0.0)
    assert call(engine, ORIGIN, m.query_write(2, [[0, 10]]), now=0.0)[0]["op"] == "WRITE_OK"
    engine.tick(10.0)  # 10 copy-outs in 10 s
    while engine.background():
        pass
    labels = {"snapshot": "monday", "tag": "1"}
    assert value("csnap_snapshot_exclusive_chunks", **labels) == 10
    assert value("csnap_snapshot_shared_chunks", **labels) == 0
    assert value("csnap_snapshot_holds", **labels) == 1
    assert value("csnap_snapshot_usage_counted_ratio") == 1.0
    assert value("csnap_store_copyout_rate") == 1.0
    free = value("csnap_store_free_chunks")
    assert value("csnap_store_time_to_full_seconds") == free
    chunks = value("csnap_store_chunks")
    assert value("csnap_store_fill_ratio") == pytest.approx((chunks - free) / chunks, abs=1e-6)
    fill = engine.status()["fill"]
    assert fill["time_to_full_s"] == free and fill["copyout_rate"] == 1.0


def test_request_metrics_and_outcomes(engine):
    registry, metrics = make_registry(engine)
    metrics.observe("QUERY_WRITE", "ok", 0.002)
    metrics.observe("QUERY_WRITE", "ok", 0.004)
    metrics.observe("QUERY_WRITE", outcome_of(m.reply_error(5, ErrorCode.STORE_FULL)), 0.5)
    metrics.observe_fsync(0.001)
    get = registry.get_sample_value
    assert get("csnap_requests_total", {"op": "QUERY_WRITE", "outcome": "ok"}) == 2
    assert get("csnap_requests_total", {"op": "QUERY_WRITE", "outcome": "store_full"}) == 1
    assert get("csnap_request_duration_seconds_count", {"op": "QUERY_WRITE"}) == 3
    assert get("csnap_request_duration_seconds_bucket", {"op": "QUERY_WRITE", "le": "0.005"}) == 2
    assert get("csnap_fsync_duration_seconds_count") == 1
    assert outcome_of(m.write_ok(1)) == "ok"
    assert outcome_of({"op": "ERROR", "id": 1, "code": 999}) == "error"


def test_http_endpoint_serves_and_closes(engine):
    metrics = start_metrics_server("127.0.0.1", 0, engine, store_hooks=False)
    try:
        host, port = metrics.address
        metrics.observe("PING", "ok", 0.0001)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["csnap_store_free_chunks"].samples[0].value > 0
        assert families["csnap_requests"].samples[0].labels == {"op": "PING", "outcome": "ok"}
        assert "process_cpu_seconds" in families or "python_info" in families
    finally:
        metrics.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)


def test_scrapes_race_with_the_store_thread(engine):
    """Scraping while connections come and go never fails (dicts copied with retries)."""
    registry, _ = make_registry(engine)
    errors: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        try:
            while not stop.is_set():
                list(registry.collect())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=scrape)
    thread.start()
    try:
        for i in range(2000):
            engine.open_conn(100 + i)
            if i % 3:
                engine.close_conn(100 + i - 1, 1.0)
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors


@pytest.mark.parametrize("text, expect", [
    ("127.0.0.1:9270", ("127.0.0.1", 9270)),
    ("[::1]:9270", ("::1", 9270)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_parse_address(text, expect):
    assert parse_address(text) == expect


@pytest.mark.parametrize("text", ["9270", ":9270", "host:", "host:99999", "host:x"])
def test_parse_address_rejects(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)
