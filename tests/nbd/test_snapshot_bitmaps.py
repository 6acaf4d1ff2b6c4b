"""qemu:dirty-bitmap:OLDER on a snapshot export: what changed between two snapshots, read by
real NBD clients, is enough for an incremental backup of the newer one."""

from __future__ import annotations

import json

from .conftest import run, snapshot
from .test_clients import CHUNK, SIZE, chunks_with, nbd_map, qemu_io


def test_snapshot_export_dirty_bitmap_names_the_changed_chunks(gateway, tmp_path):
    origin = gateway.uri("origin")
    qemu_io(origin, "write -P 0x11 0 1M")
    snapshot(gateway.server, "s1")
    qemu_io(origin, "write -P 0x22 64k 8k", "write -P 0x33 2M 4k", "write -P 0x44 3149824 100")
    changed = {16, 17, 512, 769}
    snapshot(gateway.server, "s2")
    qemu_io(origin, "write -P 0x55 0 4M")  # the origin moves on: s1 and s2 both copy out
    listing = json.loads(run("nbdinfo", "--list", "--json", origin).stdout)
    contexts = next(e["contexts"] for e in listing["exports"] if e["export-name"] == "s2")
    assert "qemu:dirty-bitmap:s1" in contexts and "qemu:dirty-bitmap:s2" not in contexts

    s1, s2 = gateway.uri("s1"), gateway.uri("s2")
    dirty = nbd_map(s2, "qemu:dirty-bitmap:s1")
    assert chunks_with(dirty, 1) == changed
    assert chunks_with(dirty, 0) == set(range(SIZE // CHUNK)) - changed
    assert chunks_with(nbd_map(s1, "qemu:dirty-bitmap:s2"), 1) == changed

    # incremental backup: the s1 image plus s2's dirty extents is the s2 image
    img1, img2 = tmp_path / "s1.img", tmp_path / "s2.img"
    run("nbdcopy", s1, str(img1))
    run("nbdcopy", s2, str(img2))
    backup = bytearray(img1.read_bytes())
    full = img2.read_bytes()
    for e in dirty:
        if e["type"] == 1:
            backup[e["offset"]:e["offset"] + e["length"]] = full[e["offset"]:
                                                                 e["offset"] + e["length"]]
    assert bytes(backup) == full != img1.read_bytes()
