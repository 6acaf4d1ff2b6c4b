"""A model-based run against a real csnapd: random creates, origin writes, holds,
releases, renames, priority changes and deletes, with SIGKILL at random points (some
with a request in flight) and restarts; every acknowledged change and every snapshot's
data must be there after each restart, and csnap-check must agree at the end (the
space counts a clean stop writes included)."""

from __future__ import annotations

import json
import random

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m

from .conftest import make_server, run_tool, snapshot_chunk

CHUNKS = 64  # origin chunks the run writes (of 1024)


def _write_origin(handle, rng: random.Random, origin: list[bytes]) -> None:  # noqa: ANN001
    """An origin write as a client does it: ask, then write, then let go."""
    cs = handle.chunk_size
    start = rng.randrange(CHUNKS - 4)
    count = rng.randint(1, 4)
    client = handle.client("origin")
    assert client.call(m.query_write(0, [[start, count]]))["op"] == "WRITE_OK"
    with open(handle.origin, "r+b") as f:
        for c in range(start, start + count):
            origin[c] = rng.randbytes(cs)
            f.seek(c * cs)
            f.write(origin[c])
    client.close()


def _listed(handle) -> dict[str, dict]:  # noqa: ANN001
    reply = handle.ctl(m.list_snapshots(1))
    return {s["name"]: s for s in reply["result"]}


def test_lifecycle_ops_survive_sigkill_at_random_points(tmp_path):
    rng = random.Random(2026)
    handle = make_server(tmp_path)
    handle.start()
    cs = handle.chunk_size
    origin = [bytes(cs)] * CHUNKS
    snaps: dict[str, dict] = {}  # name -> {"data": [...], "holds": n, "priority": p}
    serial = 0
    kills = 0
    for step in range(60):
        kind = rng.choice(["write"] * 4 + ["create"] * 2 + ["hold", "release", "set",
                                                              "delete", "kill"])
        if kind == "create" and len(snaps) < 5:
            serial += 1
            name = f"snap{serial}"
            assert handle.ctl(m.create_snapshot(1, name))["op"] == "OK"
            snaps[name] = {"data": list(origin), "holds": 0, "priority": 0}
        elif kind == "write":
            _write_origin(handle, rng, origin)
        elif kind in ("hold", "release", "set", "delete") and snaps:
            name = rng.choice(sorted(snaps))
            s = snaps[name]
            if kind == "hold":
                msg = m.hold_snapshot(1, name)
            elif kind == "release":
                msg = m.release_snapshot(1, name)
            elif kind == "delete":
                msg = m.delete_snapshot(1, name)
            else:
                serial += 1
                new, prio = f"renamed{serial}", rng.randint(-128, 127)
                msg = m.set_snapshot(1, name, name=new, priority=prio)
            if rng.random() < 0.25:  # killed with the request in flight: either outcome
                ctl = handle.control_client()
                ctl.send(msg)
                handle.kill()
                handle.start()
                kills += 1
                listed = _listed(handle)
                if kind == "set" and new in listed:
                    snaps[new] = snaps.pop(name)
                    snaps[new]["priority"] = prio
                elif kind == "delete" and name not in listed:
                    del snaps[name]
                elif kind in ("hold", "release") and name in listed:
                    s["holds"] = listed[name]["holds"]
                continue
            reply = handle.ctl(msg)
            if kind == "hold":
                assert reply["op"] == "OK"
                s["holds"] += 1
            elif kind == "release":
                if s["holds"]:
                    assert reply["op"] == "OK"
                    s["holds"] -= 1
                else:
                    assert reply["code"] == ErrorCode.LIMIT_EXCEEDED
            elif kind == "delete":
                if s["holds"]:
                    assert reply["code"] == ErrorCode.SNAPSHOT_HELD, reply
                else:
                    assert reply["op"] == "OK", reply
                    del snaps[name]
            else:
                assert reply["op"] == "OK", reply
                snaps[new] = snaps.pop(name)
                snaps[new]["priority"] = prio
        elif kind == "kill":
            handle.kill()
            handle.start()
            kills += 1
        if kind == "kill" or step % 15 == 14:
            listed = _listed(handle)
            assert set(listed) == set(snaps), (listed, snaps)
            for name, s in snaps.items():
                assert (listed[name]["holds"], listed[name]["priority"]) == \
                    (s["holds"], s["priority"]), (name, listed[name], s)
                for chunk in rng.sample(range(CHUNKS), 3):
                    assert snapshot_chunk(handle, name, chunk) == s["data"][chunk], (name, chunk)
    assert kills >= 3
    status = handle.ctl(m.status(1))["result"]
    assert status["usage_counted"] == 1.0
    assert handle.stop() == 0
    check = run_tool("csnap-check", "--store", str(handle.store), "--origin",
                     str(handle.origin), "--json", check=False)
    assert check.returncode == 0, check.stdout
    assert json.loads(check.stdout)["status"] == "clean"
    handle.start()  # a clean stop kept the counts: exact at once, no count needed
    again = handle.ctl(m.status(1))["result"]
    assert again["usage_counted"] == 1.0
    assert [(s["name"], s["exclusive"], s["shared"]) for s in again["snapshots"]] == \
        [(s["name"], s["exclusive"], s["shared"]) for s in status["snapshots"]]
    assert handle.stop() == 0
