"""SIGKILL csnapd at random moments under concurrent client load; nothing acknowledged is lost.

The harness is ``csnap_soak/kill.py`` (its docstring describes the model); CI runs 20
cycles, ``python -m csnap_soak.kill --cycles N`` runs longer soaks.
"""

from __future__ import annotations

import time

from csnap_soak import kill as kill_soak

CYCLES = 20
SEED = 20241122


def test_sigkill_under_load_loses_no_acknowledged_op(tmp_path, show_figure):
    start = time.monotonic()
    res = kill_soak.run(tmp_path, CYCLES, seed=SEED, kill_min=0.2, kill_max=1.0)
    elapsed = time.monotonic() - start
    print(f"snapshots created: {res.snapshots_created} (kills during create: "
          f"{res.kills_during_create}), writes verified: {res.writes_verified}, "
          f"reads verified: {res.reads_verified}, blocks checked: {res.blocks_checked}, "
          f"restart p50 {sorted(res.restart_s)[len(res.restart_s) // 2] * 1000:.0f} ms, "
          f"{elapsed:.0f} s")
    show_figure(res.figure())
    assert res.cycles == CYCLES
    assert res.lost == 0, "\n".join(res.problems[:20])
    assert res.check_rc == 0, res.problems
    assert res.writes_verified > 500 and res.reads_verified > 100
    assert res.snapshots_created >= 5 and res.snapshots_verified >= 5
    assert elapsed < 120
