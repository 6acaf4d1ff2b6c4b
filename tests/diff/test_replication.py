"""csnap-send / csnap-receive: replication into a second csnapd, and interrupted, damaged
or tampered streams, which resume or are refused but never leave wrong data."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from csnap_diff import stream as st
from tests.integration.conftest import BIN, make_server

from .conftest import conn_args, env_of, read_volume, tool


def image_of(path, data: bytes, snap: str) -> str:
    with open(path, "wb") as f:
        f.write(data)
    os.setxattr(path, "user.csnap.snapshot", snap.encode())
    return str(path)


def receive(srv, img, stream: bytes, *extra: str) -> subprocess.CompletedProcess:
    return tool(srv, "csnap-receive", "--file", img, *extra, input=stream, check=False)


def only_old_or_new(img: str, old: bytes, new: bytes) -> None:
    """Every byte of the target is the from state's or the to state's: nothing wrong."""
    with open(img, "rb") as f:
        got = f.read()
    assert len(got) == len(new)
    bad = [i for i in range(0, len(got), 512) if got[i:i + 512] not in (old[i:i + 512],
                                                                    new[i:i + 512])]
    assert not bad, f"wrong data at {bad[:5]}"


def resume(srv, img, want: bytes) -> None:
    token = tool(srv, "csnap-receive", "--file", img, "--token").stdout.decode().strip()
    stream = tool(srv, "csnap-send", "--resume", token).stdout
    p = receive(srv, img, stream)
    assert p.returncode == 0, p.stderr
    with open(img, "rb") as f:
        assert f.read() == want
    assert os.getxattr(img, "user.csnap.snapshot") == b"s3"
    p = tool(srv, "csnap-receive", "--file", img, "--token", check=False)
    assert p.returncode == 1  # the state is gone once complete


def test_replica_keeps_the_snapshot_history(history, tmp_path):
    src, images = history.srv, history.images
    (tmp_path / "dst").mkdir()
    dst = make_server(tmp_path / "dst")
    dst.start()
    try:
        full = tool(src, "csnap-send", "--to", "s0").stdout
        tool(dst, "csnap-receive", "--volume", "origin", input=full)
        inc = tool(src, "csnap-send", "--from", "s0", "--to", "s3", "--checkpoint", "64K").stdout
        tool(dst, "csnap-receive", "--volume", "origin", input=inc)
        assert read_volume(dst, "s0") == images["s0"]
        assert read_volume(dst, "s3") == images["s3"] == read_volume(dst, "origin")
        # the same stream again is refused: the replica is no longer in s0's state
        p = tool(dst, "csnap-receive", "--volume", "origin", input=inc, check=False)
        assert p.returncode == 5 and b"already has a snapshot 's3'" in p.stderr
    finally:
        assert dst.stop() == 0


def test_truncated_streams_resume(history, tmp_path):
    srv, images = history.srv, history.images
    stream = tool(srv, "csnap-send", "--from", "s1", "--to", "s3", "--checkpoint", "32K").stdout
    for i, cut in enumerate([5, 40, len(stream) // 3, len(stream) // 2, len(stream) - 3]):
        img = image_of(tmp_path / f"t{i}.img", images["s1"], "s1")
        p = receive(srv, img, stream[:cut])
        assert p.returncode == 5, p.stderr
        if cut > 40:
            assert b"csnap-send --resume" in p.stderr
            only_old_or_new(img, images["s1"], images["s3"])
            resume(srv, img, images["s3"])


def test_bit_flips_and_dropped_records_are_refused(history, tmp_path):
    srv, images = history.srv, history.images
    stream = tool(srv, "csnap-send", "--from", "s1", "--to", "s3", "--checkpoint", "32K").stdout
    for i, at in enumerate([3, 12, 30, len(stream) // 4, len(stream) // 2, len(stream) - 10]):
        img = image_of(tmp_path / f"f{i}.img", images["s1"], "s1")
        bad = bytearray(stream)
        bad[at] ^= 0x10
        p = receive(srv, img, bytes(bad))
        assert p.returncode == 5 and (b"checksum mismatch" in p.stderr or at < 30), p.stderr
        only_old_or_new(img, images["s1"], images["s3"])
        if i >= 3:
            resume(srv, img, images["s3"])
    # a record cut out whole (its CRC is fine): the digest at the next checkpoint refuses
    records, pos = [], len(st.MAGIC)
    while pos < len(stream):
        n = int.from_bytes(stream[pos + 1:pos + 5], "big")
        records.append((stream[pos:pos + 1], pos, pos + 9 + n))
        pos += 9 + n
    w = [r for r in records if r[0] == b"W"]
    _, a, b = w[len(w) // 2]
    img = image_of(tmp_path / "drop.img", images["s1"], "s1")
    p = receive(srv, img, stream[:a] + stream[b:])
    assert p.returncode == 5 and (b"digest mismatch" in p.stderr
                                  or b"out of order" in p.stderr), p.stderr
    resume(srv, img, images["s3"])


def test_killed_sender_and_killed_receiver_resume(history, tmp_path):
    srv, images = history.srv, history.images
    env = env_of(srv)
    for victim in ("sender", "receiver"):
        img = image_of(tmp_path / f"{victim}.img", images["s1"], "s1")
        send = subprocess.Popen([str(BIN / "csnap-send"), "--from", "s1", "--to", "s3",
                                 "--rate-limit", "1M", "--checkpoint", "64K", *conn_args(srv)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        recv = subprocess.Popen([str(BIN / "csnap-receive"), "--file", img], env=env,
                                stdin=send.stdout, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        send.stdout.close()
        deadline = time.monotonic() + 30  # wait until the receive is under way
        while not list((srv.tmp / "state").glob("receive-*.json")) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        (send if victim == "sender" else recv).send_signal(signal.SIGKILL)
        try:
            _, err = recv.communicate(timeout=30)
        finally:
            send.kill()
            send.wait()
        assert recv.returncode != 0, err
        only_old_or_new(img, images["s1"], images["s3"])
        resume(srv, img, images["s3"])


def test_a_pending_receive_is_not_overwritten_by_another_stream(history, tmp_path):
    srv, images = history.srv, history.images
    img = image_of(tmp_path / "p.img", images["s1"], "s1")
    stream = tool(srv, "csnap-send", "--from", "s1", "--to", "s3", "--checkpoint", "32K").stdout
    assert receive(srv, img, stream[:len(stream) // 2]).returncode == 5
    other = tool(srv, "csnap-send", "--from", "s1", "--to", "s2").stdout
    p = receive(srv, img, other)
    assert p.returncode == 5 and b"unfinished" in p.stderr
    tool(srv, "csnap-receive", "--file", img, "--abort")
    p = receive(srv, img, other, "--force")
    assert p.returncode == 0, p.stderr
