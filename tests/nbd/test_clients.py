"""csnap-nbd driven by real NBD clients: qemu-io, qemu-img, nbdinfo, nbdcopy (and fio).

The scenario of the issue: patterns written to the origin export, a snapshot taken, the
origin overwritten; then every client must see the snapshot as the pre-snapshot image and
the origin as the new data, and block status must name exactly the changed chunks.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from .conftest import delete_snapshot, run, snapshot, start_gateway

MiB = 1 << 20
CHUNK = 4096  # the integration fixture's chunk size
SIZE = 4 * MiB  # and origin size

PRE_WRITES = [(0x11, 0, MiB), (0x22, MiB, 512 * 1024), (0x33, 3 * MiB, 64 * 1024)]
# (pattern, offset, length): chunks 16-17, 512, and a partial write inside chunk 769
POST_WRITES = [(0x44, 64 * 1024, 8 * 1024), (0x55, 2 * MiB, 4096), (0x66, 3 * MiB + 4096, 100)]
POST_CHUNKS = {16, 17, 512, 769}


def qemu_io(uri: str, *cmds: str, check: bool = True, read_only: bool = False
            ) -> subprocess.CompletedProcess:
    """Run qemu-io commands against a raw NBD export."""
    args = ["qemu-io", "-f", "raw"] + (["-r"] if read_only else [])
    for c in cmds:
        args += ["-c", c]
    return run(*args, uri, check=check)


def apply(image: bytearray, writes: list[tuple[int, int, int]]) -> None:
    for pattern, off, n in writes:
        image[off:off + n] = bytes([pattern]) * n


def nbd_map(uri: str, context: str | None = None) -> list[dict]:
    """``nbdinfo --map[=context] --json`` as a list of extents."""
    opt = "--map" if context is None else f"--map={context}"
    out = run("nbdinfo", opt, "--json", uri).stdout
    extents = json.loads(out)
    assert sum(e["length"] for e in extents) == SIZE, extents
    return extents


def chunks_with(extents: list[dict], value: int) -> set[int]:
    """The chunks covered by extents whose type is ``value`` (all must be chunk-aligned)."""
    found: set[int] = set()
    for e in extents:
        if e["type"] == value:
            assert e["offset"] % CHUNK == 0 and e["length"] % CHUNK == 0, e
            found.update(range(e["offset"] // CHUNK, (e["offset"] + e["length"]) // CHUNK))
    return found


def test_snapshot_export_is_the_pre_snapshot_image(gateway, tmp_path):
    origin = gateway.uri("origin")
    qemu_io(origin, *(f"write -P {p:#x} {o} {n}" for p, o, n in PRE_WRITES))
    pre = bytearray(SIZE)
    apply(pre, PRE_WRITES)
    pre_img = tmp_path / "pre.img"
    run("nbdcopy", origin, str(pre_img))
    assert pre_img.read_bytes() == pre

    snapshot(gateway.server, "s1")
    qemu_io(origin, *(f"write -P {p:#x} {o} {n}" for p, o, n in POST_WRITES))
    new = bytearray(pre)
    apply(new, POST_WRITES)
    new_img = tmp_path / "new.img"
    new_img.write_bytes(new)

    s1 = gateway.uri("s1")
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", s1, str(pre_img))
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", origin, str(new_img))
    assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", s1, str(new_img),
               check=False).returncode == 1  # really different

    copy = tmp_path / "copy.img"
    run("nbdcopy", s1, str(copy))
    assert copy.read_bytes() == pre

    # block status: exactly the changed chunks
    depth = nbd_map(s1, "qemu:allocation-depth")
    assert chunks_with(depth, 1) == POST_CHUNKS
    assert chunks_with(depth, 2) == set(range(SIZE // CHUNK)) - POST_CHUNKS
    dirty = nbd_map(origin, "qemu:dirty-bitmap:s1")
    assert chunks_with(dirty, 1) == POST_CHUNKS
    assert chunks_with(depth, 0) == set() and chunks_with(dirty, 0) == set(
        range(SIZE // CHUNK)) - POST_CHUNKS
    # base:allocation never claims a hole (or zeros) over data
    for uri in (s1, origin):
        assert all(e["type"] == 0 for e in nbd_map(uri)), uri

    # qemu-img convert to qcow2 and raw
    qcow = tmp_path / "s1.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", s1, str(qcow))
    run("qemu-img", "compare", "-f", "qcow2", "-F", "raw", str(qcow), str(pre_img))
    raw = tmp_path / "s1.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", s1, str(raw))
    assert raw.read_bytes() == pre

    # writes through the snapshot export stay private to it
    off = 2 * MiB + 8192  # chunk 514: never written before
    qemu_io(s1, f"write -P 0x77 {off} 4096")
    qemu_io(s1, f"read -P 0x77 {off} 4096")
    qemu_io(origin, f"read -P 0 {off} 4096")
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", origin, str(new_img))
    assert chunks_with(nbd_map(s1, "qemu:allocation-depth"), 1) == POST_CHUNKS | {514}
    # the origin did not change there, but the snapshot now owns the chunk (docs/nbd.md)
    assert chunks_with(nbd_map(origin, "qemu:dirty-bitmap:s1"), 1) == POST_CHUNKS | {514}


def test_new_snapshots_appear_without_restart(gateway):
    origin = gateway.uri("origin")
    listing = json.loads(run("nbdinfo", "--list", "--json", origin).stdout)
    assert [e["export-name"] for e in listing["exports"]] == ["origin"]

    qemu_io(origin, "write -P 0x5a 0 64k")
    snapshot(gateway.server, "later", "--tag", "7")
    qemu_io(origin, "write -P 0xa5 0 4k")
    listing = json.loads(run("nbdinfo", "--list", "--json", origin).stdout)
    names = [e["export-name"] for e in listing["exports"]]
    assert names == ["origin", "later"]
    contexts = next(e["contexts"] for e in listing["exports"] if e["export-name"] == "origin")
    assert "qemu:dirty-bitmap:later" in contexts and "base:allocation" in contexts

    # by name and by tag
    for export in ("later", "7"):
        assert run("nbdinfo", "--size", gateway.uri(export)).stdout.strip() == str(SIZE)
        qemu_io(gateway.uri(export), "read -P 0x5a 0 64k")
    qemu_io(origin, "read -P 0xa5 0 4k")

    delete_snapshot(gateway.server, "later")
    gone = run("nbdinfo", "--size", gateway.uri("later"), check=False)
    assert gone.returncode != 0
    assert [e["export-name"] for e in json.loads(
        run("nbdinfo", "--list", "--json", origin).stdout)["exports"]] == ["origin"]


def test_unknown_export_and_empty_name(gateway):
    bad = run("nbdinfo", gateway.uri("no-such-snapshot"), check=False)
    assert bad.returncode != 0
    assert "no-such-snapshot" in bad.stderr or "unknown" in bad.stderr.lower()
    # the empty (default) export name is the origin
    assert run("nbdinfo", "--size", gateway.uri("")).stdout.strip() == str(SIZE)


def test_read_only_gateway_refuses_writes(server, tmp_path):
    from .conftest import require_tools
    require_tools()
    gw = start_gateway(server, "--read-only", tcp=True)
    try:
        info = json.loads(run("nbdinfo", "--json", gw.uri("origin")).stdout)
        assert info["exports"][0]["is_read_only"] is True
        # qemu refuses to open a read-only export for writing (the server's EPERM for a
        # write anyway is checked byte by byte in test_wire.py)
        out = qemu_io(gw.uri("origin"), "write -P 1 0 4k", check=False)
        assert out.returncode != 0 and "denied" in out.stdout + out.stderr
        qemu_io(gw.uri("origin"), "read -P 0 0 4k", read_only=True)
    finally:
        assert gw.stop() == 0, gw.log_text()


def test_fio_nbd_engine_verifies(gateway):
    fio = shutil.which("fio")
    if fio is None or "nbd" not in run(fio, "--enghelp", check=False).stdout:
        pytest.skip("fio with the nbd engine is not installed")
    snapshot(gateway.server, "base")
    run(fio, "--name=csnap", "--ioengine=nbd", f"--uri={gateway.uri('origin')}",
        "--rw=randwrite", "--bs=4k", "--size=1M", "--iodepth=16", "--verify=crc32c",
        "--do_verify=1", "--verify_state_save=0", "--output-format=terse", timeout=120)
    # the snapshot still reads as before fio (all zeros) while the origin changed
    qemu_io(gateway.uri("base"), f"read -P 0 0 {MiB}")
