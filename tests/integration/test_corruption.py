"""Metadata damage met while serving: refused writes, a flagged store, a clear report."""

from __future__ import annotations

from csnap_client.protocol import ErrorCode
from csnap_client.protocol import messages as m
from csnapd.store import format as fmt
from csnapd.store.paths import open_store
from csnapd.store.walk import walk_tree

from .conftest import make_server, run_tool
from .test_server import _create


def test_damaged_leaf_is_refused_and_reported(tmp_path):
    handle = make_server(tmp_path, block_size="512")
    handle.start()
    origin = handle.client("origin")
    _create(handle, origin, "s")
    for start in range(0, 512, 64):
        assert origin.call(m.query_write(0, [[start, 64]]))["op"] == "WRITE_OK"
    origin.detach()
    assert handle.stop() == 0
    store = open_store(str(handle.store), readonly=True)
    leaves = [(v.addr, v.lo) for v in walk_tree(store) if v.depth == 0]
    bs = store.block_size
    store.close()
    addr, lo = leaves[len(leaves) // 2]
    with open(handle.store, "r+b") as f:
        f.seek(addr * bs + 100)
        byte = f.read(1)
        f.seek(addr * bs + 100)
        f.write(bytes([byte[0] ^ 0x10]))
    handle.start()
    origin = handle.client("origin")
    _create(handle, origin, "t")
    reply = origin.call(m.query_write(0, [[lo, 1]]))
    assert reply["op"] == "ERROR" and reply["code"] == ErrorCode.STORE_CORRUPT
    assert f"block {addr}" in reply["message"] and "checksum" in reply["message"]
    # every later change is refused, reads of healthy metadata still work
    later = origin.call(m.query_write(0, [[600, 1]]))
    assert later["code"] == ErrorCode.STORE_CORRUPT
    snap = handle.client("s")
    assert snap.call(m.query_snapshot_read(0, [[0, 1]]))["op"] == "SNAPSHOT_READ_OK"
    assert f"corrupt LEAF block {addr}" in handle.log_text()
    handle.stop()
    # the flag keeps the server from serving it again until it is checked
    handle.start(wait=False)
    assert handle.proc.wait(30) != 0
    assert "marked corrupt" in handle.log_text()
    check = run_tool("csnap-check", "--store", str(handle.store), check=False)
    assert check.returncode == 1
    assert f"corrupt LEAF block {addr}: checksum mismatch" in check.stdout
    repair = run_tool("csnap-check", "--store", str(handle.store), "--repair", check=False)
    assert repair.returncode == 1 and "not repaired" in repair.stdout
    flags = open_store(str(handle.store), readonly=True)
    assert flags.sb.flags & fmt.FLAG_CORRUPT
    flags.close()
