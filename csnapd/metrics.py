"""Prometheus metrics for csnapd (``--metrics HOST:PORT``).

Two sources:

* :class:`EngineCollector` is pulled on every scrape.  It reads the plain
  Python counters the server keeps anyway (``store.status()``,
  ``store.stats``, ``engine.counters``, ``engine.locks.stats()``,
  ``engine.conns``) from the HTTP thread, without locking: every value is a
  small int read atomically under the GIL; a dict that changes size while it
  is copied is simply read again.  Nothing is counted twice and the store
  thread never waits for a scrape.
* :class:`RequestMetrics` holds what only the request path knows: per-request
  latency and outcome (``observe``, called by the net layer when a reply is
  sent), fsync latency and operations per commit (``observe_fsync`` and
  ``observe_commit``, hooked onto the store by :func:`instrument_store`).

``start_metrics_server(host, port, engine)`` registers both on a private
registry (plus the process and Python collectors) and serves ``/metrics`` from a
daemon thread.  Every name is prefixed ``csnap_``; see docs/packaging.md for
the full list and example alerts.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from csnap_client.protocol import ErrorCode

if TYPE_CHECKING:
    from csnapd.engine.service import Engine
    from csnapd.store.store import Store

log = logging.getLogger("csnapd.metrics")
T = TypeVar("T")
DEFAULT_PORT = 9270
# Request latency: from 100 us (a cached read query) to 60 s (a snapshot create
# waiting for its advice round).
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FSYNC_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                 0.1, 0.25, 0.5, 1.0, 2.5)
COMMIT_OPS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


def _retry(read: Callable[[], T], attempts: int = 5) -> T:
    """``read()``, again if the store thread resized a dict while we iterated it."""
    for _ in range(attempts - 1):
        try:
            return read()
        except RuntimeError:  # "dictionary changed size during iteration"
            time.sleep(0)
    return read()


def outcome_of(reply: dict[str, Any]) -> str:
    """The ``outcome`` label for a reply: ``ok``, or the error's name in lower case."""
    if reply.get("op") != "ERROR":
        return "ok"
    try:
        return ErrorCode(reply.get("code")).name.lower()
    except ValueError:
        return "error"


class RequestMetrics:
    """Request latency and outcome, fsync latency, operations per commit."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter("csnap_requests", "Requests answered, by operation and outcome "
                                "(ok, or the error name)", ["op", "outcome"], registry=registry)
        self.latency = Histogram("csnap_request_duration_seconds",
                                 "Time from a request's arrival to its reply being sent, "
                                 "including the group commit", ["op"], buckets=REQUEST_BUCKETS,
                                 registry=registry)
        self.fsync = Histogram("csnap_fsync_duration_seconds",
                               "Duration of each flush (fsync) of the snapshot store",
                               buckets=FSYNC_BUCKETS, registry=registry)
        self.commit_ops = Histogram("csnap_journal_commit_operations",
                                    "Operations made durable by one journal commit",
                                    buckets=COMMIT_OPS_BUCKETS, registry=registry)
        self.server: Any = None  # the WSGI server, when serving
        self.thread: Any = None
        self.address: tuple[str, int] | None = None

    def observe(self, op: str, outcome: str, seconds: float) -> None:
        """One request answered: ``op`` as on the wire, ``outcome`` from :func:`outcome_of`."""
        self.requests.labels(op, outcome).inc()
        self.latency.labels(op).observe(seconds)

    def observe_fsync(self, seconds: float) -> None:
        """One store flush took ``seconds``."""
        self.fsync.observe(seconds)

    def observe_commit(self, operations: int) -> None:
        """One journal commit made ``operations`` operations durable."""
        self.commit_ops.observe(operations)

    def close(self) -> None:
        """Stop serving and release the port (a no-op when not serving)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            if self.thread is not None:
                self.thread.join(5)
            self.server = self.thread = None


class EngineCollector(Collector):
    """Gauges and counters read from the engine and its store at scrape time."""

    def __init__(self, engine: Engine | Callable[[], Any],
                 ha: Callable[[], dict[str, Any]] | None = None) -> None:
        #: The engine, or (HA mode, where it changes with the role) how to get it.
        self.get_engine: Callable[[], Any] = engine if callable(engine) else lambda: engine
        self.ha = ha

    @property
    def engine(self) -> Any:  # noqa: ANN401 - an Engine or a standby's engine
        return self.get_engine()

    def collect(self) -> Iterator[Metric]:
        """Yield one family per metric (called by the registry on every scrape)."""
        if self.ha is not None:
            yield from self._ha(self.ha())
        engine = self.engine
        store = engine.store
        if store is None:  # a standby: no store open
            return
        st = _retry(store.status)
        stats = _retry(lambda: dict(store.stats))
        yield from self._store(st, stats)
        counters = _retry(lambda: dict(engine.counters))
        received = CounterMetricFamily("csnap_requests_received",
                                       "Requests handed to the engine, by operation",
                                       labels=["op"])
        for op, n in sorted(counters.items()):
            if op.isupper():
                received.add_metric([op], n)
        yield received
        yield _counter("csnap_snapshots_squashed", "Snapshots squashed to free store space",
                       counters.get("squashed", 0))
        locks = _retry(engine.locks.stats)
        yield _gauge("csnap_read_locks_held", "Snapshot read locks held", locks.held_locks)
        yield _gauge("csnap_read_locked_chunks", "Chunk references held by read locks",
                     locks.held_chunks)
        yield _gauge("csnap_queued_snapshot_reads", "Snapshot reads queued behind a waiting "
                     "origin write", locks.queued_reads)
        yield _gauge("csnap_waiting_origin_writes", "Origin writes waiting for read locks to "
                     "be released", locks.waiting_writes)
        yield _counter("csnap_read_locks_broken", "Read locks broken at their maximum hold "
                       "time (the reader re-read)", counters.get("locks_broken", 0))
        yield _counter("csnap_cutoff_copies", "Chunks copied at snapshot create because a "
                       "client that did not acknowledge may still write them",
                       counters.get("cutoff_copies", 0))
        yield from self._space(engine)
        yield _gauge("csnap_unproven_clients", "Disconnected clients whose grants still stand "
                     "(fence them, then csnapctl forget-client)",
                     len(_retry(engine.unproven_clients)))
        conns = _retry(lambda: list(engine.conns.values()))
        kinds = {"origin": 0, "snapshot": 0}
        for c in conns:
            if not c.control and c.identified:
                kinds["snapshot" if c.slot is not None else "origin"] += 1
        clients = GaugeMetricFamily("csnap_clients", "Identified client connections, by volume "
                                    "kind", labels=["volume"])
        for kind, n in kinds.items():
            clients.add_metric([kind], n)
        yield clients
        yield _gauge("csnap_connections", "Open connections (data and control, identified or "
                     "not)", len(conns))

    @staticmethod
    def _space(engine: Engine) -> Iterator[Metric]:
        """Per-snapshot exclusive / shared chunks, store fill and the time to full."""
        store = engine.store
        usage, counted = _retry(store.space_usage)
        snaps = _retry(store.snaps.visible)
        exclusive = GaugeMetricFamily(
            "csnap_snapshot_exclusive_chunks", "Chunks only this snapshot uses: what "
            "deleting it frees", labels=["snapshot", "tag"])
        shared = GaugeMetricFamily("csnap_snapshot_shared_chunks", "Copied chunks this "
                                   "snapshot shares with other snapshots",
                                   labels=["snapshot", "tag"])
        holds = GaugeMetricFamily("csnap_snapshot_holds", "Holds on the snapshot (never "
                                  "deleted nor squashed while above 0)",
                                  labels=["snapshot", "tag"])
        for e in snaps:
            u = usage.get(e.slot, {"unique": 0, "shared": 0})
            exclusive.add_metric([e.name, str(e.tag)], u["unique"])
            shared.add_metric([e.name, str(e.tag)], u["shared"])
            holds.add_metric([e.name, str(e.tag)], e.use_count)
        yield from (exclusive, shared, holds)
        yield _gauge("csnap_snapshot_usage_counted_ratio", "How much of the exception map "
                     "the per-snapshot counts cover (1 = exact; they are counted once after "
                     "the server starts)", counted)
        fill = _retry(engine.report.fill)
        yield _gauge("csnap_store_fill_ratio", "Fraction of the store's chunks in use",
                     fill["fill_ratio"])
        yield _gauge("csnap_store_copyout_rate", "Chunks copied out per second over the "
                     "last 10 minutes", fill["copyout_rate"])
        ttf = fill["time_to_full_s"]
        yield _gauge("csnap_store_time_to_full_seconds", "Projected seconds until the store "
                     "is full at the recent copy-out rate (+Inf while nothing is copied out)",
                     float("inf") if ttf is None else ttf)

    @staticmethod
    def _ha(st: dict[str, Any]) -> Iterator[Metric]:
        yield from (
            _gauge("csnap_ha_leader", "1 while this node leads the store (HA mode)",
                   int(st.get("role") == "leader")),
            _gauge("csnap_ha_epoch", "Election epoch this node leads under (0: standby)",
                   st.get("epoch", 0) if st.get("role") == "leader" else 0),
            _gauge("csnap_ha_lease_left_seconds", "Seconds left of the leader lease",
                   st.get("lease_left_s", 0.0)),
            _gauge("csnap_ha_etcd_reachable", "1 while etcd answers this node",
                   int(bool(st.get("etcd_reachable", True)))),
            _counter("csnap_ha_takeovers", "Times this node became the leader",
                     st.get("takeovers", 0)),
            _gauge("csnap_ha_last_takeover_seconds", "Time the last takeover took, from the "
                   "old leader's key going to serving", st.get("last_takeover_s") or 0.0),
            _counter("csnap_ha_fenced_writes", "Writes refused because the lease had ended "
                     "or a newer epoch was on disk", st.get("fenced_writes", 0)),
            _counter("csnap_ha_late_writes", "Writes that completed after the lease ended "
                     "(not acknowledged; should stay 0)", st.get("late_writes", 0)),
        )

    @staticmethod
    def _store(st: dict[str, Any], stats: dict[str, int]) -> Iterator[Metric]:
        jblocks = st.get("journal_blocks", 0)
        deleting = st.get("deleting") or {}
        fill = st.get("clone_fill") or {}
        rev = st.get("revert") or {}
        yield from (
            _gauge("csnap_store_chunks", "Chunks in the snapshot store", st["store_chunks"]),
            _gauge("csnap_store_free_chunks", "Free chunks in the snapshot store",
                   st["free_chunks"]),
            _gauge("csnap_store_used_chunks", "Used chunks (data and metadata)",
                   st["used_chunks"]),
            _gauge("csnap_store_chunk_size_bytes", "Chunk size", st["chunk_size"]),
            _gauge("csnap_origin_chunks", "Chunks in the origin volume", st["origin_chunks"]),
            _gauge("csnap_exceptions", "Exceptions (copied chunks) in the B-tree",
                   st["exceptions"]),
            _gauge("csnap_tree_depth", "Depth of the exception B-tree", st["tree_depth"]),
            _gauge("csnap_snapshots", "Visible snapshots", st["snapshots"]),
            _gauge("csnap_snapshot_delete_active", "1 while a background delete runs",
                   int(bool(deleting.get("active")))),
            _gauge("csnap_clone_fill_active", "1 while a clone's copies are being shared "
                   "with it in the background", int(bool(fill.get("active")))),
            _gauge("csnap_revert_active", "1 while the origin is being reverted to a "
                   "snapshot (origin clients are refused meanwhile)",
                   int(bool(rev.get("active")))),
            _gauge("csnap_revert_ratio", "How far the revert has come (1 when none runs)",
                   rev.get("fraction", 1.0)),
            _gauge("csnap_clone_fill_ratio", "How far the clone fill has come (1 when none "
                   "runs)", fill.get("fraction", 1.0)),
            _gauge("csnap_journal_blocks", "Journal size in blocks", jblocks),
            _gauge("csnap_journal_used_blocks", "Journal blocks in use since the last "
                   "checkpoint", st["journal_used"]),
            _gauge("csnap_journal_fill_ratio", "Fraction of the journal in use",
                   st["journal_used"] / jblocks if jblocks else 0.0),
            _gauge("csnap_cache_blocks", "Metadata blocks in the cache", st["cache_blocks"]),
            _gauge("csnap_cache_bytes", "Bytes of metadata in the cache", st["cache_bytes"]),
            _counter("csnap_cache_hits", "Metadata cache hits", st["cache_hits"]),
            _counter("csnap_cache_misses", "Metadata cache misses", st["cache_misses"]),
            _gauge("csnap_store_failed", "1 once the store refuses changes after an error",
                   int(bool(st.get("failed")))),
            _counter("csnap_journal_commits", "Journal commits (transactions)",
                     stats.get("commits", 0)),
            _counter("csnap_committed_operations", "Operations made durable by journal commits "
                     "(divide by csnap_journal_commits_total for operations per commit)",
                     stats.get("ops_committed", 0)),
            _counter("csnap_checkpoints", "Journal checkpoints", stats.get("checkpoints", 0)),
            _counter("csnap_journal_corrected_blocks", "Damaged journal blocks that recovery "
                     "mended (or found not needed) when the store was opened",
                     stats.get("journal_corrected", 0)),
            _counter("csnap_store_flushes", "Flushes (fsyncs) of the snapshot store",
                     stats.get("flushes", 0)),
            _counter("csnap_copyouts", "Chunks copied from the origin to the store",
                     stats.get("copyouts", 0)),
            _counter("csnap_copied_bytes", "Bytes copied from the origin to the store",
                     stats.get("bytes_copied", 0)),
        )


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def instrument_store(store: Store, metrics: RequestMetrics) -> None:
    """Time every flush of ``store``'s device and count operations per commit.

    Wraps bound methods on this store object only (the store module stays free of
    any metrics import): ``store.dev.flush`` feeds ``observe_fsync``;
    ``store.sealed_done`` (every transaction that became durable, whether written by
    the server's pipeline or by ``commit()``) feeds ``observe_commit`` with the
    operations it made durable.
    """
    dev_flush = store.dev.flush
    sealed_done = store.sealed_done

    @functools.wraps(dev_flush)
    def timed_flush() -> None:
        start = time.perf_counter()
        try:
            dev_flush()
        finally:
            metrics.observe_fsync(time.perf_counter() - start)

    @functools.wraps(sealed_done)
    def counted_done(sealed: Any) -> None:
        ops = store.stats["ops_committed"]
        sealed_done(sealed)
        metrics.observe_commit(store.stats["ops_committed"] - ops)

    store.dev.flush = timed_flush  # type: ignore[method-assign]
    store.sealed_done = counted_done  # type: ignore[method-assign]


def make_registry(engine: Engine | Callable[[], Any],
                  ha: Callable[[], dict[str, Any]] | None = None
                  ) -> tuple[CollectorRegistry, RequestMetrics]:
    """A private registry with the engine collector, request metrics and process metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(EngineCollector(engine, ha))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry, RequestMetrics(registry)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9270`` for IPv6) -> (host, port); ValueError when malformed."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics wants HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def start_metrics_server(host: str, port: int, engine: Engine | Callable[[], Any],
                         store_hooks: bool = True,
                         ha: Callable[[], dict[str, Any]] | None = None) -> RequestMetrics:
    """Serve ``/metrics`` for ``engine`` on ``host:port`` from a daemon thread.

    Returns the :class:`RequestMetrics` the net layer reports requests to
    (``.address`` is the bound address, useful with port 0; ``.close()`` stops
    serving).  With ``store_hooks`` the engine's store is instrumented for fsync
    latency and operations per commit (:func:`instrument_store`).  Raises
    OSError when the address cannot be bound.
    """
    registry, metrics = make_registry(engine, ha)
    server, thread = start_http_server(port, addr=host, registry=registry)
    metrics.server, metrics.thread = server, thread
    metrics.address = server.server_address[:2]
    if store_hooks:
        instrument_store(engine.store, metrics)
    log.info("serving metrics on http://%s:%d/metrics", host, metrics.address[1])
    return metrics


__all__ = ["DEFAULT_PORT", "EngineCollector", "RequestMetrics", "instrument_store",
           "make_registry", "outcome_of", "parse_address", "start_metrics_server"]
