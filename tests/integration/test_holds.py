"""csnapctl hold / release / set against a real csnapd, across a SIGKILL and a restart."""

from __future__ import annotations

import json

from csnap_client.protocol import messages as m

from .conftest import make_server, run_tool


def test_holds_renames_and_priorities_survive_sigkill(tmp_path):
    handle = make_server(tmp_path)
    handle.start()
    ctl = ("csnapctl", "--control", str(handle.control))
    run_tool(*ctl, "create", "monday")
    run_tool(*ctl, "create", "tuesday")
    assert "1 hold now" in run_tool(*ctl, "hold", "monday").stdout
    assert "2 holds now" in run_tool(*ctl, "hold", "monday").stdout
    out = run_tool(*ctl, "set", "tuesday", "--name", "weekly", "--priority", "-9").stdout
    assert "name 'weekly', priority -9" in out
    refused = run_tool(*ctl, "delete", "monday", check=False)
    assert refused.returncode == 1
    assert "SNAPSHOT_HELD" in refused.stderr and "csnapctl release monday" in refused.stderr
    assert run_tool(*ctl, "set", "weekly", check=False).returncode == 2  # nothing to set
    handle.kill()
    handle.start()
    listed = {s["name"]: s for s in json.loads(run_tool(*ctl, "list", "--json").stdout)}
    assert set(listed) == {"monday", "weekly"}
    assert listed["monday"]["holds"] == 2 and listed["weekly"]["priority"] == -9
    assert handle.client("weekly").call(m.ping(0))["op"] == "PONG"
    run_tool(*ctl, "release", "monday")
    assert "can be deleted" in run_tool(*ctl, "release", "monday").stdout
    run_tool(*ctl, "delete", "monday")
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), check=False)
    assert check.returncode == 0, check.stdout
