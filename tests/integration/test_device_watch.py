"""csnapd notices its store or origin being replaced, and the tools that take the store's
lock say in words when csnapd holds it (real processes, real files)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnapd.store import format as fmt

from .conftest import ServerHandle, make_server, run_tool

DETECT_S = 10  # csnapd checks every second; allow for a slow, shared CI machine


def fingerprint(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns, st.st_size


def served(tmp: Path) -> ServerHandle:
    """A running csnapd whose store has settled (its first batch commits once after
    start), so any later change to the store file is not csnapd's own."""
    handle = make_server(tmp)
    handle.start()
    last = fingerprint(handle.store)
    for _ in range(50):
        time.sleep(0.3)
        now = fingerprint(handle.store)
        if now == last:
            return handle
        last = now
    raise AssertionError("the idle server's store kept changing")


def stopped_because(handle: ServerHandle, text: str) -> str:
    """Wait for csnapd to exit on its own; check its exit status and log; return the log."""
    started = time.monotonic()
    code = handle.proc.wait(DETECT_S)
    log = handle.log_text()
    assert code == 3, (code, log)
    assert text in log, log
    assert "refusing all changes and stopping" in log
    assert "stopped without writing to the store again" in log
    assert time.monotonic() - started < DETECT_S
    return log


def test_store_renamed_over_stops_csnapd_and_fails_waiting_requests(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "other").mkdir()
    a = served(tmp_path / "a")
    other = make_server(tmp_path / "other")  # another setup's store, same size
    run_tool("csnapctl", "--control", str(a.control), "create", "s")
    reader = a.client("s")
    locked = reader.call(m.query_snapshot_read(0, [[5, 1]]))
    assert locked["origin"] == [[5, 1]]
    writer = a.client("origin")
    waiting = writer.send(m.query_write(0, [[5, 1]]))  # waits for the reader's lock
    time.sleep(0.3)
    before = fingerprint(other.store)
    os.rename(other.store, a.store)
    stopped_because(a, f"store {a.store} was replaced: the path now names inode")
    reply = writer.wait_for(waiting)
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.SHUTTING_DOWN, reply
    assert "not done: csnapd is stopping: store" in reply["message"]
    assert fingerprint(a.store) == before  # the replacement was never written


def test_store_uuid_overwritten_in_place_is_detected(tmp_path):
    a = served(tmp_path)
    with open(a.store, "r+b") as f:
        f.seek(fmt.SUPER_UUID_OFFSET)
        f.write(b"\x5a" * 16)
    before = fingerprint(a.store)
    stopped_because(a, f"store {a.store}: superblock slot 0 no longer holds this store's UUID")
    assert fingerprint(a.store) == before


def test_origin_renamed_over_is_detected(tmp_path):
    a = served(tmp_path)
    replacement = tmp_path / "replacement.img"
    with open(replacement, "wb") as f:
        f.truncate(os.path.getsize(a.origin))
    before = fingerprint(replacement)
    os.rename(replacement, a.origin)
    stopped_because(a, f"origin {a.origin} was replaced")
    assert fingerprint(a.origin) == before


def test_tools_that_take_the_lock_say_csnapd_holds_it(tmp_path):
    a = served(tmp_path)
    want = (f"{a.store} is in use by a running csnapd (or another csnap tool holds its "
            "lock); stop it first")
    init = run_tool("csnap-init", "--store", str(a.store), "--origin", str(a.origin),
                    "--force", check=False)
    assert init.returncode == 3 and init.stderr.strip() == f"csnap-init: {want}"
    assert "Errno" not in init.stderr
    repair = run_tool("csnap-check", "--store", str(a.store), "--repair", check=False)
    assert repair.returncode == 3 and repair.stderr.strip() == f"csnap-check: {want}"
    as_json = run_tool("csnap-check", "--store", str(a.store), "--repair", "--json",
                       check=False)
    assert as_json.returncode == 3
    assert json.loads(as_json.stdout) == {"status": "in_use", "error": want}
    assert a.client().call(m.ping(5))["op"] == "PONG"  # csnapd was not disturbed
    assert a.stop() == 0, a.log_text()
    check = run_tool("csnap-check", "--store", str(a.store), "--origin", str(a.origin))
    assert check.returncode == 0
