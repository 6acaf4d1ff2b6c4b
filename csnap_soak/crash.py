"""Crash soak: the long power-loss crash-state run for the snapshot store.

Runs the same enumeration as tests/crash/test_crash_states.py (every prefix
of the recorded write log, torn variants of every write, reordered subsets of
the writes after each barrier, a crash inside recovery for a sample, and more
work after recovery for a sample) over many seeded workloads and four store
geometries, until at least ``--states`` crash states have been tried.  Every
state is recovered, checked with check_store and compared with the model of
what clients were told; see csnap_soak/crash_harness.py and
docs/reliability-crash.md.

Run from the repository root:

    .venv/bin/python -m csnap_soak.crash --states 100000 --jobs 2
    .venv/bin/python -m csnap_soak.crash --seed 17 --states 1 --verbose   # replay one seed
    .venv/bin/python -m csnap_soak.crash --states 20000 --lifecycle   # holds, renames, priorities, clones
    .venv/bin/python -m csnap_soak.crash --states 20000 --grow   # store and origin growth

Seeds run in order (seed, seed+1, ...); seed s uses geometry
GEOMETRY_ORDER[s % 4].  Results are collected in seed order and the run stops
after the seed that reaches --states, so a run is reproducible whatever
--jobs is.  Exit status: 0 no failures, 1 failures (each printed with the
seed and crash spec that reproduce it), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

from .crash_harness import GEOMETRIES, Tally, run_seed

GEOMETRY_ORDER = ("small", "k1", "wide", "deep")


def _one(args: tuple[int, int, float, float, bool, bool]) -> tuple[int, str, Tally, float]:
    seed, nops, double_rate, continue_rate, meta, grow = args
    name = GEOMETRY_ORDER[seed % len(GEOMETRY_ORDER)]
    t0 = time.perf_counter()
    tally = run_seed(seed, nops, geo=GEOMETRIES[name], double_rate=double_rate,
                     continue_rate=continue_rate, meta=meta, grow=grow, clones=meta)
    return seed, name, tally, time.perf_counter() - t0


def _in_order(pool, args: argparse.Namespace):  # noqa: ANN001
    """Results seed by seed, keeping at most 2 * jobs seeds in flight."""
    def task(seed: int) -> tuple[int, int, float, float, bool, bool]:
        return seed, args.ops, args.double_rate, args.continue_rate, args.lifecycle, args.grow

    seed = args.seed
    if pool is None:
        while True:
            yield _one(task(seed))
            seed += 1
    pending = []
    while True:
        while len(pending) < 2 * args.jobs:
            pending.append(pool.apply_async(_one, (task(seed),)))
            seed += 1
        yield pending.pop(0).get()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m csnap_soak.crash", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--states", type=int, default=100_000,
                   help="stop after the seed that brings the total to this many states")
    p.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    p.add_argument("--ops", type=int, default=120, help="operations per workload")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--double-rate", type=float, default=0.1,
                   help="fraction of states whose recovery is crashed and recovered again")
    p.add_argument("--continue-rate", type=float, default=0.05,
                   help="fraction of states used for more work after recovery")
    p.add_argument("--lifecycle", action="store_true",
                   help="workloads with holds, releases, priority changes, renames, clones "
                   "and clone fill steps too")
    p.add_argument("--grow", action="store_true",
                   help="workloads with store growths (in the bitmaps' reach and beyond) and "
                   "origin growths too")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--verbose", action="store_true", help="one line per seed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.states < 1 or args.jobs < 1 or args.ops < 1:
        print("csnap_soak.crash: --states, --jobs and --ops must be positive", file=sys.stderr)
        return 2
    total = Tally()
    per_geometry: dict[str, int] = {}
    seeds_run = 0
    t0 = time.perf_counter()
    slowest = 0.0

    pool = multiprocessing.Pool(args.jobs) if args.jobs > 1 else None
    last_report = t0
    try:
        for seed, name, tally, secs in _in_order(pool, args):
            seeds_run += 1
            total.merge(tally)
            per_geometry[name] = per_geometry.get(name, 0) + tally.states
            slowest = max(slowest, secs)
            for example in tally.examples:
                print(f"FAIL {example}", flush=True)
            now = time.perf_counter()
            if args.verbose or now - last_report > 30:
                last_report = now
                print(f"seed {seed} ({name}): {tally.states} states, {tally.failures} failures; "
                      f"total {total.states} in {now - t0:.0f} s", flush=True)
            if total.states >= args.states:
                break
    finally:
        if pool:
            pool.terminate()
    elapsed = time.perf_counter() - t0
    print(total.figure())
    print(f"seeds {args.seed}..{args.seed + seeds_run - 1} ({seeds_run} workloads of {args.ops} "
          f"ops; states per geometry: "
          f"{', '.join(f'{k} {v}' for k, v in sorted(per_geometry.items()))}); "
          f"{elapsed:.0f} s, {total.states / max(elapsed, 1e-9):.0f} states/s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"states": total.states, "failures": total.failures,
                       "by_kind": total.by_kind, "double_crash": total.double,
                       "continued": total.continued, "per_geometry": per_geometry,
                       "first_seed": args.seed, "seeds": seeds_run, "ops": args.ops,
                       "seconds": round(elapsed, 1), "examples": total.examples}, fh, indent=1)
    return 1 if total.failures else 0


if __name__ == "__main__":
    sys.exit(main())
