"""What csnapd and the offline tools say when something is wrong: the key words and the
exit status of every message an operator meets in the first hour (issue 15)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from csnap_client.protocol import messages as m
from tests.integration.conftest import free_port, make_server, run_tool

BIN = Path(sys.executable).parent


def csnapd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "csnapd"), "--config", "", *args], capture_output=True,
                          text=True, timeout=timeout)


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """An initialised 32 MiB store for an 8 MiB origin."""
    store, origin = sparse(tmp_path / "store.img", 32 << 20), sparse(tmp_path / "origin.img",
                                                                     8 << 20)
    run_tool("csnap-init", "--store", str(store), "--origin", str(origin), "--quiet")
    return store, origin


# ---------------------------------------------------------------------- csnapd


def test_csnapd_names_a_missing_origin_as_the_origin(pair, tmp_path):
    store, _ = pair
    r = csnapd("--store", str(store), "--origin", str(tmp_path / "nope.img"),
               "--control", str(tmp_path / "c.sock"))
    assert r.returncode == 1
    assert f"csnapd: origin {tmp_path / 'nope.img'} does not exist" in r.stderr
    assert "--origin" in r.stderr
    assert "Errno" not in r.stderr and "cannot open store" not in r.stderr


def test_csnapd_says_how_to_make_a_missing_store(pair, tmp_path):
    _, origin = pair
    missing = tmp_path / "new-store.img"
    r = csnapd("--store", str(missing), "--origin", str(origin),
               "--control", str(tmp_path / "c.sock"))
    assert r.returncode == 1
    assert f"store {missing} does not exist" in r.stderr
    assert f"truncate -s 64M {missing}" in r.stderr  # a quarter of the origin, at least 64M
    assert f"csnap-init --store {missing} --origin {origin}" in r.stderr


def test_csnapd_suggests_csnap_init_for_an_uninitialised_store(tmp_path):
    store = sparse(tmp_path / "store.img", 32 << 20)
    origin = sparse(tmp_path / "origin.img", 8 << 20)
    r = csnapd("--store", str(store), "--origin", str(origin),
               "--control", str(tmp_path / "c.sock"))
    assert r.returncode == 1
    assert f"store {store} is not initialised" in r.stderr
    assert f"csnap-init --store {store} --origin {origin}" in r.stderr


def test_csnapd_doubts_a_device_that_holds_other_data(tmp_path):
    store = tmp_path / "store.img"
    store.write_bytes(os.urandom(256 << 10))
    origin = sparse(tmp_path / "origin.img", 8 << 20)
    r = csnapd("--store", str(store), "--origin", str(origin),
               "--control", str(tmp_path / "c.sock"))
    assert r.returncode == 1
    assert "not a csnap store" in r.stderr and "is this the right device?" in r.stderr
    assert "csnap-init" not in r.stderr  # it may be a store that lost its superblocks


def test_csnapd_refuses_a_directory_by_role(pair, tmp_path):
    store, origin = pair
    r = csnapd("--store", str(tmp_path), "--origin", str(origin),
               "--control", str(tmp_path / "c.sock"))
    assert r.returncode == 1 and f"store {tmp_path} is a directory" in r.stderr
    r = csnapd("--store", str(store), "--origin", str(tmp_path),
               "--control", str(tmp_path / "c.sock"))
    assert r.returncode == 1 and f"origin {tmp_path} is a directory" in r.stderr


def test_csnapd_says_which_address_is_in_use(pair, tmp_path):
    store, origin = pair
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = csnapd("--store", str(store), "--origin", str(origin),
                   "--listen", f"127.0.0.1:{port}", "--control", str(tmp_path / "c.sock"))
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: the address is in use" in r.stderr
    assert "--listen" in r.stderr
    assert not (tmp_path / "c.sock").exists()
    assert run_tool("csnap-check", "--store", str(store)).stdout.startswith("clean:")


def test_csnapd_never_takes_over_the_control_socket_of_a_running_csnapd(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = make_server(tmp_path / "a")
    first.start()
    second = make_server(tmp_path / "b")
    r = csnapd("--store", str(second.store), "--origin", str(second.origin),
               "--listen", f"127.0.0.1:{second.port}", "--control", str(first.control))
    assert r.returncode == 1
    assert f"control socket {first.control} is in use: another csnapd is running" in r.stderr
    assert first.ctl(m.list_snapshots(1))["op"] == "OK"
    assert first.stop() == 0


def test_csnapd_as_another_user_without_control_says_to_give_one(tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run csnapd as an unprivileged user")
    shared = Path(tempfile.mkdtemp(prefix="csnap-nobody-"))
    try:
        shared.chmod(0o755)
        store, origin = sparse(shared / "store.img", 32 << 20), sparse(shared / "origin.img",
                                                                       8 << 20)
        run_tool("csnap-init", "--store", str(store), "--origin", str(origin), "--quiet")
        store.chmod(0o666)
        origin.chmod(0o666)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            str(BIN / "csnapd"), "--config", "", "--store", str(store),
                            "--origin", str(origin), "--listen", f"127.0.0.1:{free_port()}"],
                           capture_output=True, text=True, timeout=60, cwd=shared)
    finally:
        shutil.rmtree(shared)
    if "permission denied" in r.stderr.lower() and "store" in r.stderr.split(":")[1]:
        pytest.skip(f"nobody cannot reach the test files here: {r.stderr}")
    assert r.returncode == 1, r.stderr
    assert "/run/csnapd" in r.stderr
    assert "run csnapd as root, or give --control PATH" in r.stderr


def test_csnapd_as_root_without_control_leaves_nothing_behind(pair):
    if os.geteuid() != 0:
        pytest.skip("only root may create /run/csnapd")
    if os.path.exists("/run/csnapd"):
        pytest.skip("/run/csnapd exists (a csnapd with the default socket runs here?)")
    store, origin = pair
    port = free_port()
    proc = subprocess.Popen([str(BIN / "csnapd"), "--config", "", "--store", str(store),
                             "--origin", str(origin), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists("/run/csnapd/control.sock"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        assert sorted(os.listdir("/run/csnapd")) == ["control.sock"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "store closed cleanly" in proc.stdout.read()
    assert not os.path.exists("/run/csnapd"), os.listdir("/run/csnapd")


# ---------------------------------------------------------------------- csnap-init


def test_init_says_how_to_create_a_missing_store(tmp_path):
    origin = sparse(tmp_path / "origin.img", 1 << 30)
    missing = tmp_path / "store.img"
    r = run_tool("csnap-init", "--store", str(missing), "--origin", str(origin), check=False)
    assert r.returncode == 1
    assert f"csnap-init: store {missing} does not exist" in r.stderr
    assert f"truncate -s 256M {missing}" in r.stderr and "Sizing the store" in r.stderr
    assert "Errno" not in r.stderr


def test_init_says_the_origin_must_exist_first(tmp_path):
    store = sparse(tmp_path / "store.img", 32 << 20)
    missing = tmp_path / "origin.img"
    r = run_tool("csnap-init", "--store", str(store), "--origin", str(missing), check=False)
    assert r.returncode == 1
    assert f"csnap-init: origin {missing} does not exist" in r.stderr
    assert "records the origin's size" in r.stderr and f"truncate -s 1G {missing}" in r.stderr


def test_init_warns_about_a_store_far_too_small_for_its_origin(tmp_path):
    store = sparse(tmp_path / "store.img", 16 << 20)
    origin = sparse(tmp_path / "origin.img", 256 << 20)
    r = run_tool("csnap-init", "--store", str(store), "--origin", str(origin), "--quiet",
                 check=False)
    assert r.returncode == 0  # created: a warning, not a refusal
    assert r.stderr.startswith("csnap-init: warning: the store has room for 13.9M of "
                               "snapshot data, only 5.4% of the 256M origin")
    assert "snapshots are squashed" in r.stderr and "Sizing the store" in r.stderr
    assert r.stdout == ""


def test_init_does_not_warn_about_a_sensible_size(tmp_path):
    store = sparse(tmp_path / "store.img", 2 << 30)
    origin = sparse(tmp_path / "origin.img", 1 << 30)
    r = run_tool("csnap-init", "--store", str(store), "--origin", str(origin), "--quiet")
    assert r.stderr == ""


# ---------------------------------------------------------------------- csnap-check, -dump


def test_check_and_dump_on_a_missing_or_blank_store(tmp_path):
    missing = tmp_path / "store.img"
    for tool, rest in (("csnap-check", ()), ("csnap-dump", ("superblock",))):
        r = run_tool(tool, "--store", str(missing), *rest, check=False)
        assert r.returncode == 2 and r.stderr == f"{tool}: store {missing} does not exist\n"
        blank = sparse(tmp_path / "blank.img", 8 << 20)
        r = run_tool(tool, "--store", str(blank), *rest, check=False)
        assert r.returncode == 2
        assert f"store {blank} is not initialised" in r.stderr
        assert f"csnap-init --store {blank} --origin ORIGIN" in r.stderr
    r = run_tool("csnap-check", "--store", str(missing), "--json", check=False)
    assert r.returncode == 2 and json.loads(r.stdout)["status"] == "unreadable"


def test_check_says_the_journal_will_be_replayed_after_an_unclean_stop(tmp_path):
    handle = make_server(tmp_path)
    handle.start()
    assert handle.ctl(m.create_snapshot(1, "monday"))["op"] == "OK"
    handle.kill()
    r = run_tool("csnap-check", "--store", str(handle.store), "--origin", str(handle.origin))
    verdict = r.stdout.splitlines()[-1]
    assert verdict.startswith("clean (not shut down cleanly, so ")
    assert "journal transaction(s) were replayed in memory only: csnapd or csnap-check "\
           "--repair replays them for good when it opens the store)" in verdict
    report = json.loads(run_tool("csnap-check", "--store", str(handle.store), "--json").stdout)
    assert report["status"] == "clean" and report["shutdown"] == "unclean"
    assert report["replayed_transactions"] >= 1
    r = run_tool("csnap-check", "--store", str(handle.store), "--repair")
    assert "checkpointed: the store is now marked clean" in r.stdout
    r = run_tool("csnap-check", "--store", str(handle.store))
    assert r.stdout.startswith("clean: ")
    assert json.loads(run_tool("csnap-check", "--store", str(handle.store),
                               "--json").stdout)["shutdown"] == "clean"


def test_check_on_a_served_store_says_it_is_in_use(server):
    r = run_tool("csnap-check", "--store", str(server.store))
    assert r.returncode == 0
    assert "the store is open in another process (a running csnapd?)" in r.stderr
    assert r.stdout.splitlines()[-1].startswith("clean (in use by another process, whose "
                                                "journal (")


def test_csnapd_usage_errors_name_the_option(pair, tmp_path):
    store, origin = pair
    base = ("--store", str(store), "--origin", str(origin), "--control", str(tmp_path / "c"))
    r = csnapd(*base, "--listen", "127.0.0.1:99999")
    assert r.returncode == 2  # it used to listen on a random port
    assert "csnapd: --listen wants HOST:PORT with a port up to 65535, not " in r.stderr
    r = csnapd(*base, "--cache-size", "lots")
    assert r.returncode == 2 and r.stderr.startswith("csnapd: --cache-size: not a size: 'lots'")
