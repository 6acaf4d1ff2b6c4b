"""The leader SIGKILLed under load, ten times in a row: nothing acknowledged is lost.

The harness is the SIGKILL soak (``csnap_soak/kill.py``) with ``ha=True``: two csnapd
nodes over a real etcd (``--ha-lease 1``), 4 origin writers, and for each of the (at
most 2) live snapshots a writer and a reader, all following the leader through their
``servers`` list. Each cycle kills whichever node leads; the standby takes over and the
killed node comes back as the standby. At the end every acknowledged write and every
read is checked against the model, every snapshot byte is verified, and csnap-check
must pass. ``python -m csnap_soak.kill --ha --cycles 100`` is the long run.
"""

from __future__ import annotations

from csnap_soak import kill as kill_soak

from .conftest import needs_etcd

pytestmark = needs_etcd
CYCLES = 10


def test_leader_sigkilled_under_load_ten_times_loses_nothing(tmp_path, show_figure):
    res = kill_soak.run(tmp_path, CYCLES, seed=12, max_live=2, kill_min=0.5, kill_max=1.2,
                        ha=True, writers=4, ha_lease=1.0)
    show_figure(res.figure())
    assert res.cycles == CYCLES
    assert res.lost == 0, "\n".join(res.problems[:20])
    assert res.check_rc == 0, res.problems
    assert len(res.takeover_s) == CYCLES
    assert res.writes_verified > 200 and res.snapshots_verified >= 2
