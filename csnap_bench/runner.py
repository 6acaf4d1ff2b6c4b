"""One benchmark run: the stages in order, collected into one JSON-ready report."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import baselines
from .config import STAGES, Config
from .cost import stage_cost
from .harness import log
from .nbd import stage_nbd
from .qemu import stage_qemu
from .report import evaluate_targets
from .scale import stage_scale
from .stages import stage_4k, stage_64k, stage_snapcount

REPORT_VERSION = 2
Stage = Callable[[Config, Path, dict[str, Any]], Awaitable[None] | None]
RUNNERS: dict[str, Stage] = {
    "cost": stage_cost, "4k": stage_4k, "64k": stage_64k, "snapcount": stage_snapcount,
    "qemu": stage_qemu, "nbd": stage_nbd, "scale": stage_scale,
}
assert tuple(RUNNERS) == STAGES


def new_report(cfg: Config, tmp: Path) -> dict[str, Any]:
    """The report skeleton: every section present, filled by the stages that run."""
    machine = baselines.machine_info(tmp)
    machine["busy_at_start"] = baselines.busy_processes()
    return {"version": REPORT_VERSION, "mode": cfg.mode, "machine": machine,
            "config": cfg.as_dict(),
            "client": "one Python process (uvloop), closed loop, one request in flight per "
                      "connection",
            "baselines": {}, "cost": {}, "workloads": {}, "group_commit": {}, "scale": {},
            "qemu": {}, "nbd": {}, "stages": {}}


async def run(cfg: Config, tmp: Path, only: set[str]) -> dict[str, Any]:
    """Every selected stage (all when ``only`` is empty); returns the report."""
    out = new_report(cfg, tmp)
    t0 = time.perf_counter()
    for name in STAGES:
        if only and name not in only:
            continue
        t = time.perf_counter()
        log(f"== stage {name}")
        result = RUNNERS[name](cfg, tmp, out)
        if asyncio.iscoroutine(result):
            await result
        out["stages"][name] = {"seconds": round(time.perf_counter() - t, 1),
                               "loadavg_after": round(os.getloadavg()[0], 2)}
    out["elapsed_s"] = round(time.perf_counter() - t0, 1)
    out["machine"]["loadavg_at_end"] = list(os.getloadavg())
    out["targets"] = evaluate_targets(out)
    return out


def run_blocking(cfg: Config, tmp: Path, only: set[str]) -> dict[str, Any]:
    """``run`` on a uvloop event loop (asyncio's when uvloop is missing)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(cfg, tmp, only))
    return uvloop.run(run(cfg, tmp, only))
