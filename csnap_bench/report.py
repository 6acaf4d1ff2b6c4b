"""The report: targets with their verdicts, the printed tables, and before/after comparison.

Targets come in three groups: ``primary`` (csnapd against the ideal server and the NBD
peer, from the issue that introduced them), ``kept`` (scale targets of docs/performance.md
that still stand) and ``legacy`` (the earlier absolute rates, still evaluated so old and new
runs line up). A target whose figure was not measured at its size in this run is ``n/a``.
"""

from __future__ import annotations

import json
from typing import Any

from . import cost

KIB, MIB = 1 << 10, 1 << 20


def _pt(out: dict[str, Any], wl: str, clients: int, k: int) -> dict[str, Any] | None:
    return next((p for p in out["workloads"].get(wl, [])
                 if p["clients"] == clients and p["chunks_per_msg"] == k), None)


class Targets:
    """Collects target verdicts."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, group: str, name: str, wanted: str, value: Any, met: bool | None,
            detail: str = "") -> None:
        """One target; ``met`` None means not measured (at its size) in this run."""
        if value is None or value == {}:
            met = None
        self.rows.append({"group": group, "target": name, "wanted": wanted, "value": value,
                          "met": met, "detail": detail})


def _primary(out: dict[str, Any], t: Targets) -> None:
    for row in out.get("cost", {}).get("rows", []):
        name, c = row["workload"], row["connections"]
        limit, ratio = row["cpu_ratio_target"], row["cpu_ratio"]
        t.add("primary", f"cpu_per_query_{name}_{c}c", f"<= {limit}x ideal server", ratio,
              ratio is not None and ratio <= limit,
              f"{row['csnapd_cpu_us_per_query']} vs {row['ideal_cpu_us_per_query']} us/query")
        if name == "first_touch" and c == 16:
            ops = row.get("acked_ops_per_fsync")
            t.add("primary", "first_touch_ops_per_fsync_16c",
                  f">= {cost.OPS_PER_FSYNC_TARGET}", ops,
                  ops is not None and ops >= cost.OPS_PER_FSYNC_TARGET,
                  f"{row.get('ops_per_commit')} ops per commit")
            wb = row.get("write_bytes_per_copyout")
            t.add("primary", "first_touch_store_bytes_per_copyout_16c",
                  f"<= {cost.BYTES_PER_COPYOUT_TARGET} B (4 KiB chunks)", wb,
                  wb is not None and wb <= cost.BYTES_PER_COPYOUT_TARGET,
                  f"write_bytes; st_blocks growth {row.get('allocated_bytes_per_copyout')} B")
    for name, row in out.get("nbd", {}).get("results", {}).items():
        if row["target"]:
            t.add("primary", f"nbd_{name}", ">= 1.0x qemu-nbd qcow2", row["ratio"],
                  row["ratio"] is not None and row["ratio"] >= 1.0,
                  f"{row['csnap']} vs {row['qcow2']} {row['unit']} ({row['tool']})")


def _kept(out: dict[str, Any], t: Targets) -> None:
    s = out.get("scale", {})
    if not s:
        return
    full = s["large"]["exceptions"] >= 10_000_000
    ratio = s["lookup_ratio_large_vs_small"]
    t.add("kept", "lookup_rate_large_vs_10k", ">= 50% at 10M exceptions", ratio,
          ratio >= 0.5 if full else None,
          f"measured at {s['large']['exceptions']} exceptions"
          + ("" if full else " (not 10M: indicative)"))
    d = s["large"]["delete"]
    t.add("kept", "worst_latency_during_delete", "<= 100 ms (1M-exception delete)",
          d["worst_latency_ms"],
          d["finished"] and d["worst_latency_ms"] is not None and d["worst_latency_ms"] <= 100
          if d["doomed_exceptions"] >= 1_000_000 else None,
          f"deleting {d['doomed_exceptions']} exceptions took {d['delete_seconds']} s")


def _legacy(out: dict[str, Any], t: Targets) -> None:
    b = out["baselines"]
    p = _pt(out, "first_touch_4k", 16, 1)
    t.add("legacy", "first_touch_4k_16_clients", ">= 12000 chunks/s", p and p["chunks_per_s"],
          p is not None and p["chunks_per_s"] >= 12000)
    best64 = max((q["mb_per_s"] or 0 for q in out["workloads"].get("first_touch_64k", [])),
                 default=0)
    raw = b.get("copy_mb_per_s_64k") or 0
    t.add("legacy", "first_touch_64k_vs_copy", ">= 70% of raw copy",
          round(best64 / raw, 3) if raw else None, bool(raw) and best64 / raw >= 0.7,
          f"best {best64} MB/s vs raw copy {raw} MB/s")
    q1 = _pt(out, "rewrite_unique_raw", 16, 1)
    t.add("legacy", "metadata_queries_1_chunk_16_clients", ">= 75000 msgs/s",
          q1 and q1["ops_per_s"], q1 is not None and q1["ops_per_s"] >= 75000)
    q64 = _pt(out, "rewrite_unique_raw", 16, 64)
    t.add("legacy", "metadata_queries_64_chunks_16_clients", ">= 500000 chunks/s",
          q64 and q64["chunks_per_s"], q64 is not None and q64["chunks_per_s"] >= 500000)
    g = out.get("group_commit", {})
    t.add("legacy", "acked_ops_per_fsync_16_clients", ">= 16", g.get("ops_per_fsync"),
          g.get("ops_per_fsync", 0) >= 16, f"{g.get('ops_per_commit')} ops per commit")
    lib = out["workloads"].get("rewrite_cached_library", [])
    worst = min((r["ratio_to_raw"] for r in lib), default=None)
    t.add("legacy", "cached_rewrites_vs_raw_write", ">= 90%", worst,
          worst is not None and worst >= 0.9,
          "; ".join(f"{r['write_size'] // KIB} KiB: {r['mb_per_s']} vs "
                    f"{r['raw_pwrite_mb_per_s']} MB/s" for r in lib))
    costs = {d["live_snapshots"]: d["cost_vs_1"]
             for d in out["workloads"].get("snapshot_count", [])}
    worst_cost = max((v for k, v in costs.items() if k > 1), default=None)
    top = max(costs, default=0)
    t.add("legacy", "first_touch_cost_many_snapshots", "<= 1.2x cost at 1", costs,
          worst_cost is not None and worst_cost <= 1.2 if top >= 1024 else None,
          "" if top >= 1024 else f"only measured up to {top} snapshots in this mode")
    s = out.get("scale", {})
    if s:
        full = s["large"]["exceptions"] >= 10_000_000
        rss, cache = s["large"]["rss_bytes"], s["large"]["cache_size_bytes"]
        t.add("legacy", "rss_vs_cache", "<= cache + 100 MB",
              f"{rss / MIB:.0f} MiB (cache {cache / MIB:.0f} MiB)",
              rss <= cache + 100 * MIB if full else None,
              "" if full else "not at 10M: indicative")


def evaluate_targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured figure and verdict."""
    t = Targets()
    _primary(out, t)
    _kept(out, t)
    _legacy(out, t)
    return t.rows


# --------------------------------------------------------------------- printing

def fsyncs_per_query(row: dict[str, Any]) -> float | None:
    """csnapd's fdatasyncs per query over a cost row's repetitions."""
    reps = row.get("reps", {}).get("csnapd", [])
    queries = sum(r["queries"] for r in reps)
    return round(sum(r.get("flushes", 0) for r in reps) / queries, 3) if queries else None


def _cost_table(out: dict[str, Any]) -> None:
    rows = out.get("cost", {}).get("rows", [])
    if not rows:
        return
    c = out["cost"]
    print(f"server CPU per query, csnapd vs the ideal server ({c['chunk_size'] // KIB} KiB "
          f"chunks, one live snapshot, one chunk per query, median of {c['reps']} x "
          f"{c['seconds_per_point']} s)")
    hdr = (f"{'workload':<15} {'conns':>5} {'csnapd us/q':>11} {'ideal us/q':>10} "
           f"{'ratio':>6} {'target':>7} {'csnapd q/s':>10} {'ideal q/s':>9} "
           f"{'fsync/q':>7} {'ops/fsync':>9} {'B/copy-out':>10}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ops = r.get("acked_ops_per_fsync")
        wb = r.get("write_bytes_per_copyout")
        print(f"{r['workload']:<15} {r['connections']:>5} {r['csnapd_cpu_us_per_query']:>11.1f} "
              f"{r['ideal_cpu_us_per_query']:>10.1f} {r['cpu_ratio'] or 0:>6.2f} "
              f"{'<=' + str(r['cpu_ratio_target']):>7} {r['csnapd_queries_per_s']:>10.0f} "
              f"{r['ideal_queries_per_s']:>9.0f} {fsyncs_per_query(r) or 0:>7.3f} "
              f"{'-' if ops is None else ops:>9} "
              f"{'-' if wb is None else wb:>10}")
    print("(fsync/q: csnapd's store fdatasyncs per query; B/copy-out: its write_bytes per "
          "copy-out; the ideal server writes 0 bytes and never syncs. origin_read = read + "
          "FINISH, two messages)")
    print()


def _nbd_table(out: dict[str, Any]) -> None:
    n = out.get("nbd", {})
    if "skipped" in n:
        print(f"nbd: {n['skipped']}\n")
        return
    if not n:
        return
    print(f"NBD, csnap-nbd vs {n['peer']}; {n['bytes'] >> 20} MiB, fio: {n['fio']}")
    hdr = f"{'measurement':<22} {'tool':<8} {'unit':<6} {'csnap':>9} {'qcow2':>9} {'ratio':>6}"
    print(hdr + f" {'raw':>8}")
    print("-" * (len(hdr) + 9))
    for name, r in n["results"].items():
        raw = f"{r['raw']:>8.1f}" if "raw" in r else f"{'':>8}"
        mark = " *" if r["target"] else ""
        print(f"{name:<22} {r['tool']:<8} {r['unit']:<6} {r['csnap']:>9.1f} {r['qcow2']:>9.1f} "
              f"{r['ratio'] or 0:>6.2f} {raw}{mark}")
    print("(* target >= 1.0; raw = nbdcopy through qemu-nbd -f raw on a plain file)\n")


def _throughput_table(out: dict[str, Any]) -> None:
    hdr = (f"{'workload':<24} {'cli':>4} {'k':>3} {'ops/s':>10} {'chunks/s':>10} {'MB/s':>8} "
           f"{'p50 ms':>8} {'p99 ms':>8} {'srv cpu':>7} {'cli cpu':>7} {'srv us/op':>9} "
           f"{'B/chunk':>7}")
    if not any(out["workloads"].values()):
        return
    print(hdr)
    print("-" * len(hdr))
    for name, pts in out["workloads"].items():
        for p in pts:
            if "clients" not in p:
                continue
            mb = f"{p['mb_per_s']:.1f}" if p.get("mb_per_s") else "-"
            label = name if "live_snapshots" not in p else f"first_touch_{p['live_snapshots']}snaps"
            print(f"{label:<24} {p['clients']:>4} {p['chunks_per_msg']:>3} "
                  f"{p['ops_per_s']:>10.0f} {p['chunks_per_s']:>10.0f} {mb:>8} "
                  f"{p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f} {p['server_cpu']:>7.2f} "
                  f"{p['client_cpu']:>7.2f} {p.get('server_us_per_op', '-'):>9} "
                  f"{p.get('server_write_bytes_per_chunk') or '-':>7}")
    print("(srv us/op: csnapd CPU per message; B/chunk: csnapd's write_bytes per chunk)")
    for r in out["workloads"].get("rewrite_cached_library", []):
        print(f"library cached rewrite {r['write_size'] // KIB} KiB: {r['mb_per_s']} MB/s, "
              f"p50 {r['p50_ms']} ms (raw pwrite {r['raw_pwrite_mb_per_s']} MB/s, "
              f"ratio {r['ratio_to_raw']})")
    print()


def print_report(out: dict[str, Any]) -> None:
    """The human-readable results on stdout."""
    _cost_table(out)
    _nbd_table(out)
    _throughput_table(out)
    print(f"baselines: {json.dumps(out['baselines'])}")
    mach = out["machine"]
    print(f"machine: {mach['nproc']} x {mach['cpu_model']}; load average at start "
          f"{mach['loadavg_at_start'][0]:.2f}, at end {mach['loadavg_at_end'][0]:.2f}")
    if mach.get("busy_at_start"):
        print("busiest other processes at start: " + "; ".join(mach["busy_at_start"]))
    if out.get("group_commit"):
        g = out["group_commit"]
        print(f"group commit (16 clients, first touch): {g['ops_per_commit']} acked ops per "
              f"commit, {g['ops_per_fsync']} per fsync")
    s = out.get("scale")
    if s:
        for key in ("small", "large"):
            x = s[key]
            print(f"scale {key}: {x['exceptions']} exceptions, server lookups "
                  f"{x['lookup']['chunks_per_s']:.0f}/s (p99 {x['lookup']['p99_ms']} ms), store "
                  f"layer {x['store_layer_lookups_per_s']}/s, RSS {x['rss_bytes'] / MIB:.0f} MiB")
        d = s["large"]["delete"]
        print(f"delete {d['doomed_exceptions']} exceptions: {d['delete_seconds']} s, worst "
              f"latency of other clients {d['worst_latency_ms']} ms (p99 {d['p99_latency_ms']})")
        r = s["large"].get("revert")
        if r:
            print(f"revert to a snapshot owning {r['snapshot_exceptions']} exceptions: "
                  f"answered in {r['revert_ack_seconds']} s, done in {r['revert_seconds']} s, "
                  f"worst latency of snapshot readers {r['worst_latency_ms']} ms "
                  f"(p99 {r['p99_latency_ms']})")
        c = s["large"].get("clone")
        if c:
            print(f"clone of a snapshot owning {c['parent_exceptions']} exceptions: answered "
                  f"in {c['clone_ack_seconds']} s, filled in {c['clone_seconds']} s, worst "
                  f"latency of other clients {c['worst_latency_ms']} ms "
                  f"(p99 {c['p99_latency_ms']})")
    q = out.get("qemu", {})
    if "skipped" in q:
        print(f"qemu: {q['skipped']}")
    elif q:
        print(f"qemu-img first-touch 4K writes/s: {q['no_flush']['writes_per_s']} (no flush), "
              f"{q['flush_each']['writes_per_s']} (flush each); csnap/qemu = "
              f"{q['ratio_csnap_vs_qemu_no_flush']} / {q['ratio_csnap_vs_qemu_flush_each']}")
    print()
    for group in ("primary", "kept", "legacy"):
        rows = [t for t in out["targets"] if t["group"] == group]
        if rows:
            print(f"targets ({group}):")
        for t in rows:
            state = {True: "MET", False: "MISSED", None: "n/a"}[t["met"]]
            print(f"[{state:>6}] {t['target']}: {t['value']} (want {t['wanted']}) {t['detail']}")


def headline(out: dict[str, Any]) -> dict[str, Any]:
    """The figures worth comparing between runs, by name."""
    h: dict[str, Any] = {}
    for r in out.get("cost", {}).get("rows", []):
        key = f"{r['workload']}_{r['connections']}c"
        h[f"cpu_ratio_{key}"] = r["cpu_ratio"]
        h[f"csnapd_us_per_query_{key}"] = r["csnapd_cpu_us_per_query"]
        if r["workload"] == "first_touch":
            h[f"ops_per_fsync_{key}"] = r.get("acked_ops_per_fsync")
            h[f"bytes_per_copyout_{key}"] = r.get("write_bytes_per_copyout")
    for name, r in out.get("nbd", {}).get("results", {}).items():
        h[f"nbd_ratio_{name}"] = r["ratio"]
    s = out.get("scale", {})
    if s:
        h["lookup_ratio_large_vs_small"] = s["lookup_ratio_large_vs_small"]
        h["delete_worst_latency_ms"] = s["large"]["delete"]["worst_latency_ms"]
    return h


def print_comparison(before: dict[str, Any], after: dict[str, Any]) -> None:
    """The headline figures of an earlier report beside this run's."""
    b, a = headline(before), headline(after)
    print(f"\ncompared with the earlier report (mode {before.get('mode')}, load average "
          f"{before.get('machine', {}).get('loadavg_at_start', ['?'])[0]}):")
    for key in sorted(set(a) | set(b)):
        x, y = b.get(key), a.get(key)
        change = f"{y / x:.2f}x" if isinstance(x, (int, float)) and isinstance(
            y, (int, float)) and x else ""
        print(f"  {key:<44} {x!s:>10} -> {y!s:>10} {change}")
