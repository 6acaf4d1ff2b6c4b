"""csnap-diff and csnap-apply on a real csnapd with a random snapshot history: every pair
of snapshots, Ceph's rbd merge-diff on csnap's diffs, and diffs written in Ceph's format."""

from __future__ import annotations

import os
import struct
import subprocess

from csnap_diff.rbd import RbdDiffReader
from tools import csnap_apply, csnap_diff

from .conftest import CS, conn_args, read_volume, require_rbd, snapshot, tool, write_volume


def image_of(path, data: bytes, snap: str | None) -> str:
    with open(path, "wb") as f:
        f.write(data)
    if snap is not None:
        os.setxattr(path, "user.csnap.snapshot", snap.encode())
    return str(path)


def test_every_pair_and_full_diffs_rebuild_the_snapshot(history, tmp_path):
    srv, names, images = history.srv, history.names, history.images
    assert len(set(images.values())) == len(names)  # the history really differs
    for b in names:
        for a in [None, *names]:
            if a == b:
                continue
            diff = tmp_path / f"{a}-{b}.diff"
            args = ["--to", b, "--output", str(diff), *conn_args(srv)]
            assert csnap_diff.main(args + ([] if a is None else ["--from", a])) == 0
            img = image_of(tmp_path / f"{a}-{b}.img", b"" if a is None else images[a], a)
            assert csnap_apply.main([str(diff), "--file", img]) == 0
            with open(img, "rb") as f:
                assert f.read() == images[b], (a, b)
            assert os.getxattr(img, "user.csnap.snapshot") == b.encode()
            with open(diff, "rb") as f:
                r = RbdDiffReader(f)
                assert (r.header.from_snap, r.header.to_snap, r.header.size) == (
                    a, b, len(images[b]))
                recs = list(r)
            assert r.complete
            ends = [(k, o, o + (len(v) if k == "w" else v)) for k, o, v in recs]
            for (k1, _, e1), (k2, s2, _) in zip(ends, ends[1:], strict=False):
                assert e1 < s2 or (e1 == s2 and k1 != k2), "sorted; adjacent ones merged"
            assert all(s % CS == 0 for _, s, _ in ends)


def test_diff_is_small_and_zeros_are_z_records(history, tmp_path):
    srv = history.srv
    snapshot(srv, "y")
    write_volume(srv, "origin", [(100 * CS, bytes(8 * CS)), (300 * CS, b"x" * CS)])
    snapshot(srv, "z")
    out = tool(srv, "csnap-diff", "--from", "y", "--to", "z").stdout
    import io
    r = RbdDiffReader(io.BytesIO(out))
    recs = list(r)
    assert ("z", 100 * CS, 8 * CS) in recs
    assert [k for k, o, _ in recs if o == 300 * CS] == ["w"]
    assert len(out) < 3 * CS


def test_apply_refuses_a_wrong_from_state(history, tmp_path):
    srv, images = history.srv, history.images
    diff = tmp_path / "s1-s2.diff"
    assert csnap_diff.main(["--from", "s1", "--to", "s2", "-o", str(diff), *conn_args(srv)]) == 0
    img = image_of(tmp_path / "x.img", images["s0"], "s0")
    assert csnap_apply.main([str(diff), "--file", img]) == 5
    with open(img, "rb") as f:
        assert f.read() == images["s0"]  # nothing written
    img2 = image_of(tmp_path / "y.img", images["s1"], None)
    assert csnap_apply.main([str(diff), "--file", img2]) == 5
    assert csnap_apply.main([str(diff), "--file", img2, "--force"]) == 0
    with open(img2, "rb") as f:
        assert f.read() == images["s2"]
    # a csnap origin that is not s1 is refused too (the server compares sharemaps)
    p = tool(srv, "csnap-apply", str(diff), "--volume", "origin", *conn_args(srv), check=False)
    assert p.returncode == 5 and b"differs from snapshot 's1'" in p.stderr


def test_apply_to_a_csnap_origin_and_create_the_snapshot(history, tmp_path):
    """A second csnapd whose origin is s1 becomes s2, snapshot and all."""
    from tests.integration.conftest import make_server
    src, images = history.srv, history.images
    (tmp_path / "dst").mkdir()
    dst = make_server(tmp_path / "dst")
    dst.start()
    try:
        full = tool(src, "csnap-diff", "--to", "s1").stdout
        tool(dst, "csnap-apply", "-", "--volume", "origin", "--create-snapshot", input=full)
        assert read_volume(dst, "s1") == images["s1"]
        inc = tool(src, "csnap-diff", "--from", "s1", "--to", "s2").stdout
        tool(dst, "csnap-apply", "-", "--volume", "origin", "--create-snapshot", input=inc)
        assert read_volume(dst, "s2") == images["s2"] == read_volume(dst, "origin")
        assert read_volume(dst, "s1") == images["s1"]
    finally:
        assert dst.stop() == 0


def test_rbd_merge_diff_reads_csnap_diffs(history, tmp_path):
    rbd = require_rbd()
    srv, names, images = history.srv, history.names, history.images
    diffs = []
    for a, b in [(None, names[0]), *zip(names, names[1:], strict=False)]:
        path = tmp_path / f"{a}-{b}.diff"
        args = ["--to", b, "-o", str(path), *conn_args(srv)]
        assert csnap_diff.main(args + ([] if a is None else ["--from", a])) == 0
        diffs.append(path)
    merged = diffs[0]
    for i, nxt in enumerate(diffs[1:], 1):
        out = tmp_path / f"merged-{i}.diff"
        proc = subprocess.run([rbd, "merge-diff", "--no-progress", str(merged), str(nxt),
                               str(out)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        merged = out
        # the merge of full..s_i applied to nothing gives s_i
        img = image_of(tmp_path / f"m{i}.img", b"", None)
        assert csnap_apply.main([str(merged), "--file", img]) == 0
        with open(img, "rb") as f:
            assert f.read() == images[names[i]]
    # and an incremental merge s0..s1 + s1..s2 applied to s0 gives s2
    out = tmp_path / "inc.diff"
    proc = subprocess.run([rbd, "merge-diff", "--no-progress", str(diffs[1]), str(diffs[2]),
                           str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    img = image_of(tmp_path / "inc.img", images["s0"], "s0")
    assert csnap_apply.main([str(out), "--file", img]) == 0
    with open(img, "rb") as f:
        assert f.read() == images["s2"]


def ceph_diff(records: list[tuple], size: int, from_snap: str | None, to_snap: str | None,
              version: int = 1) -> bytes:
    """An rbd diff written by hand, byte by byte as Ceph's doc/dev/rbd-diff.rst says."""
    out = b"rbd diff v%d\n" % version
    for tag, name in ((b"f", from_snap), (b"t", to_snap)):
        if name is not None:
            raw = name.encode()
            out += tag + (struct.pack("<Q", 4 + len(raw)) if version == 2 else b"")
            out += struct.pack("<I", len(raw)) + raw
    out += b"s" + (struct.pack("<Q", 8) if version == 2 else b"") + struct.pack("<Q", size)
    for rec in records:
        if rec[0] == "w":
            body = struct.pack("<QQ", rec[1], len(rec[2])) + rec[2]
        else:
            body = struct.pack("<QQ", rec[1], rec[2])
        out += rec[0].encode() + (struct.pack("<Q", len(body)) if version == 2 else b"") + body
    return out + b"e"


def test_a_diff_written_in_cephs_format_applies(history, tmp_path):
    srv, images = history.srv, history.images
    size = len(images["s3"])
    recs = [("w", 5, b"hello"), ("z", 4096, 3 * CS), ("w", size - 10, b"0123456789"),
            ("w", 70000, b"\xff" * 9000)]
    for version in (1, 2):
        img = image_of(tmp_path / f"v{version}.img", images["s3"], "s3")
        diff = tmp_path / f"hand{version}.diff"
        diff.write_bytes(ceph_diff(recs, size, "s3", "hand", version))
        assert csnap_apply.main([str(diff), "--file", img]) == 0
        want = bytearray(images["s3"])
        want[5:10] = b"hello"
        want[4096:4096 + 3 * CS] = bytes(3 * CS)
        want[size - 10:] = b"0123456789"
        want[70000:79000] = b"\xff" * 9000
        with open(img, "rb") as f:
            assert f.read() == want
    # into a csnap origin that is s3 (unchanged since), through the client library
    diff = tmp_path / "hand1.diff"
    snapshot(srv, "now")
    diff.write_bytes(ceph_diff(recs, size, "now", "hand"))
    tool(srv, "csnap-apply", str(diff), "--volume", "origin", "--create-snapshot")
    got = read_volume(srv, "hand")
    assert got == read_volume(srv, "origin") and got[5:10] == b"hello"
    assert got[4096:4096 + 3 * CS] == bytes(3 * CS)


def test_truncated_rbd_diff_is_reported(history, tmp_path):
    srv, images = history.srv, history.images
    out = tool(srv, "csnap-diff", "--from", "s0", "--to", "s1").stdout
    img = image_of(tmp_path / "t.img", images["s0"], "s0")
    p = tool(srv, "csnap-apply", "-", "--file", img, input=out[:-1], check=False)
    assert p.returncode == 5 and b"truncated" in p.stderr
    try:
        os.getxattr(img, "user.csnap.snapshot")
        raise AssertionError("a half-applied file must not claim a snapshot")
    except OSError:
        pass
