"""What csnapctl and csnap-io say: the key words and exit status of each message (issue 15).

Whether csnapd runs is looked up in /proc; tests that assert "not running" replace that
look-up, since other csnapd processes (other tests) may run on the same machine.
"""

from __future__ import annotations

import asyncio
import os
import pty
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tools import cli, csnap_io, csnapctl

ROOT = str(Path(__file__).resolve().parents[2])
NOT_RUNNING = "csnapd is not running on this host (no csnapd process is visible)"
ONE = [cli.RunningServer(812, "127.0.0.1:4271", "/run/elsewhere.sock", None, "/")]


@pytest.fixture
def nothing_runs(monkeypatch):
    monkeypatch.setattr(csnapctl, "running_servers", lambda: [])
    monkeypatch.setattr(csnap_io, "running_servers", lambda: [])


async def run_ctl(*argv):
    return await asyncio.to_thread(csnapctl.main, list(argv))


# ---------------------------------------------------------------------- csnapctl


def test_csnapctl_without_a_socket_says_csnapd_is_not_running(tmp_path, capsys, nothing_runs):
    path = tmp_path / "none.sock"
    assert csnapctl.main(["--control", str(path), "list"]) == csnapctl.EXIT_CONNECT == 3
    err = capsys.readouterr().err
    assert err.startswith(f"csnapctl: cannot connect to control socket {path}: no such "
                          f"socket; {NOT_RUNNING}; start it")
    assert err.count("\n") == 1


def test_csnapctl_on_a_stale_socket_says_nothing_listens(tmp_path, capsys, nothing_runs):
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # what a killed csnapd leaves: the file, nobody listening
    assert csnapctl.main(["--control", str(path), "status"]) == 3
    err = capsys.readouterr().err
    assert f"control socket {path}: nothing listens on it" in err
    assert "did not stop cleanly" in err and NOT_RUNNING in err


def test_csnapctl_points_at_the_socket_a_running_csnapd_has(tmp_path):
    text = csnapctl.connect_problem(str(tmp_path / "x.sock"), FileNotFoundError(2, "x"), ONE)
    assert text.endswith("no such socket; csnapd is running here: csnapd (pid 812) listening "
                         "on 127.0.0.1:4271, control socket /run/elsewhere.sock; give its "
                         "socket with --control /run/elsewhere.sock (or set CSNAP_CONTROL)")


def test_csnapctl_explains_permission_denied(tmp_path):
    path = tmp_path / "root.sock"
    path.write_bytes(b"")
    text = csnapctl.connect_problem(str(path), PermissionError(13, "Permission denied"), [])
    assert "permission denied: only root and the user csnapd runs as" in text
    assert "run csnapctl as one of them" in text


async def test_csnapctl_says_created_and_deleted_alike(fake, capsys):
    ctl = ("--control", fake.control_path)
    assert await run_ctl(*ctl, "create", "monday") == 0
    assert capsys.readouterr().out.startswith("created snapshot 'monday' tag ")
    assert await run_ctl(*ctl, "delete", "monday") == 0
    assert capsys.readouterr().out == ("deleted snapshot 'monday'; its chunks are freed in the "
                                       "background\n")
    assert await run_ctl(*ctl, "create", "tuesday", "--tag", "3") == 0
    capsys.readouterr()
    assert await run_ctl(*ctl, "delete", "3") == 0
    assert capsys.readouterr().out.startswith("deleted snapshot tag 3;")
    assert await run_ctl(*ctl, "delete", "monday") == 1
    err = capsys.readouterr().err
    assert err.startswith("csnapctl: delete failed: UNKNOWN_SNAPSHOT")
    assert err.endswith("; 'csnapctl list' shows the snapshots\n")


def test_status_shows_no_empty_failed_line_and_no_python_booleans():
    status = {"store": {"chunk_size": 65536, "store_chunks": 100, "used_chunks": 10,
                        "free_chunks": 90, "exceptions": 1, "failed": "",
                        "deleting": {"active": False, "cursor": 0}},
              "snapshots": [{"tag": 1, "name": "monday", "created": 0, "unique": 1,
                             "shared": 0, "priority": 0, "squashed": False}],
              "clients": [], "locks": {"broken": 0}, "operations": []}
    text = csnapctl.summarize_status(status)
    assert "False" not in text and "True" not in text
    assert "failed" not in text.lower()
    assert "active: no" in text
    row = next(line for line in text.splitlines() if "monday" in line)
    assert row.split()[0] == "1" and row.split()[-1] == "no"
    failed = csnapctl.summarize_status({"store": {**status["store"], "failed": "I/O error"}})
    assert "FAILED:     I/O error" in failed


def test_status_shows_fill_time_to_full_and_exclusive_chunks():
    status = {"store": {"chunk_size": 4096, "store_chunks": 100, "used_chunks": 40,
                        "free_chunks": 60, "exceptions": 3},
              "fill": {"fill_ratio": 0.4, "free_chunks": 60, "copyout_rate": 0.5,
                       "rate_window_s": 600.0, "time_to_full_s": 12600.0},
              "usage_counted": 0.25,
              "snapshots": [{"tag": 1, "name": "monday", "created": None, "exclusive": 3,
                             "unique": 3, "shared": 2, "priority": 0, "holds": 1,
                             "squashed": False}]}
    text = csnapctl.summarize_status(status)
    assert "fill:       40.0%, full in 3.5 h at 0.5 copy-outs/s (the last 10 min)" in text
    assert "cover 25% of the store so far" in text
    head = next(line for line in text.splitlines() if "EXCLUSIVE" in line).split()
    row = next(line for line in text.splitlines() if "monday" in line).split()
    assert row[head.index("EXCLUSIVE")] == "3" and row[head.index("HOLDS")] == "1"
    idle = csnapctl.summarize_status({**status, "fill": {**status["fill"],
                                                         "time_to_full_s": None}})
    assert "not filling" in idle


def test_list_says_yes_and_no():
    text = csnapctl.format_list([{"tag": 1, "name": "a", "created": 0, "priority": 0,
                                  "squashed": True},
                                 {"tag": 2, "name": "b", "created": 0, "priority": 0,
                                  "squashed": False}])
    rows = [line.split() for line in text.splitlines()]
    assert rows[0][-1] == "SQUASHED" and rows[1][-1] == "yes" and rows[2][-1] == "no"


# ---------------------------------------------------------------------- csnap-io


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_csnap_io_says_which_address_it_tried(devices, capsys, nothing_runs):
    port = free_port()
    assert csnap_io.main(["--server", f"127.0.0.1:{port}", "--volume", "origin",
                          "--origin", devices[0], "read", "--length", "1"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"csnap-io: cannot connect to csnapd at 127.0.0.1:{port}: "
                          "connection refused (nothing listens on that address); "
                          f"{NOT_RUNNING}")


def test_csnap_io_points_at_the_address_a_running_csnapd_has():
    text = csnap_io.connect_problem("127.0.0.1:4270", "127.0.0.1",
                                    ConnectionRefusedError(111, "refused"), ONE)
    assert "csnapd is running here: csnapd (pid 812) listening on 127.0.0.1:4271" in text
    assert text.endswith("give its address with --server 127.0.0.1:4271 (or set "
                         "CSNAP_SERVER)")


def test_csnap_io_on_another_host_asks_whether_csnapd_runs_there():
    text = csnap_io.connect_problem("10.0.0.5:4270", "10.0.0.5",
                                    ConnectionRefusedError(111, "refused"), [])
    assert text.startswith("cannot connect to csnapd at 10.0.0.5:4270: connection refused")
    assert "is csnapd running on 10.0.0.5, listening on that address" in text
    late = csnap_io.connect_problem("10.0.0.5:4270", "10.0.0.5", TimeoutError(), [])
    assert "no answer within the connect timeout" in late
    bad = csnap_io.connect_problem("nohost:1", "nohost", socket.gaierror(-2, "Name unknown"))
    assert "cannot resolve host 'nohost'" in bad


def test_csnap_io_names_a_missing_device(tmp_path, capsys):
    missing = tmp_path / "origin.img"
    assert csnap_io.main(["--volume", "origin", "--origin", str(missing), "read",
                          "--length", "1"]) == 2
    assert capsys.readouterr().err.startswith(f"csnap-io: origin {missing} does not exist")


def csnap_io_env(fake, devices) -> dict[str, str]:
    return {"CSNAP_SERVER": f"127.0.0.1:{fake.port}", "CSNAP_ORIGIN": devices[0],
            "CSNAP_STORE": devices[1], "PATH": "/usr/bin:/bin"}


async def test_csnap_io_read_ends_with_a_newline_on_a_terminal(fake, devices):
    primary, secondary = pty.openpty()
    try:
        cmd = [sys.executable, "-m", "tools.csnap_io", "--volume", "origin", "read",
               "--offset", "1", "--length", "4"]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=secondary, stderr=subprocess.PIPE, env=csnap_io_env(fake, devices),
            cwd=ROOT)
        _, err = await proc.communicate()
        assert proc.returncode == 0, err
        out = os.read(primary, 100)
    finally:
        os.close(primary)
        os.close(secondary)
    assert out == b"\0\0\0\0\r\n"  # the tty turns the added "\n" into "\r\n"


async def test_csnap_io_into_a_closed_pipe_is_quiet(fake, devices):
    cmd = [sys.executable, "-m", "tools.csnap_io", "--volume", "origin", "read",
           "--length", "256K"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=csnap_io_env(fake, devices),
        cwd=ROOT)
    assert len(await proc.stdout.read(1)) == 1
    proc._transport.get_pipe_transport(1).close()  # like `| head -c 1`
    err = await proc.stderr.read()
    assert await proc.wait() == 0
    assert b"Traceback" not in err and b"Broken pipe" not in err


# ---------------------------------------------------------------------- finding csnapd


def test_running_servers_reads_command_lines(tmp_path):
    proc = tmp_path / "proc"

    def process(pid: int, argv: list[str], cwd: str = "/") -> None:
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        os.symlink(cwd, proc / str(pid) / "cwd")

    process(40, ["/w/.venv/bin/python", "/w/.venv/bin/csnapd", "--store", "s", "--origin",
                 "o", "--listen", "0.0.0.0:4300", "--control", "data/csnapd.sock"], cwd="/w")
    process(41, ["bash", "-c", "sleep 1"])
    process(42, ["/usr/bin/python3", "-m", "csnapd.daemon", "--config", "/etc/c.toml"])
    process(43, ["/usr/local/bin/csnapd", "--store=s", "--origin=o"])
    process(44, ["/usr/local/bin/csnapd", "--help"])
    (proc / "self").mkdir()
    found = cli.running_servers(str(proc))
    assert [s.pid for s in found] == [40, 42, 43]
    assert found[0].listen == "0.0.0.0:4300" and found[0].control_path() == \
        "/w/data/csnapd.sock"
    assert found[1].describe() == "csnapd (pid 42) configured by /etc/c.toml"
    assert found[2].describe() == ("csnapd (pid 43) listening on 127.0.0.1:4270, control "
                                   "socket /run/csnapd/control.sock")
    assert cli.servers_hint([]) .startswith(NOT_RUNNING)


def test_csnap_io_refuses_a_port_out_of_range(devices, capsys):
    assert csnap_io.main(["--server", "127.0.0.1:70000", "--volume", "origin", "--origin",
                          devices[0], "read", "--length", "1"]) == 2
    assert "--server must be HOST:PORT (port 1..65535)" in capsys.readouterr().err


async def test_csnapctl_delete_finds_a_snapshot_named_by_digits(fake, capsys):
    ctl = ("--control", fake.control_path)
    assert await run_ctl(*ctl, "create", "20261202") == 0
    err = capsys.readouterr().err
    assert "note: '20261202' is all digits: csnapctl delete finds it by name" in err
    assert await run_ctl(*ctl, "delete", "20261202") == 0
    assert capsys.readouterr().out.startswith("deleted snapshot '20261202';")
    assert await run_ctl(*ctl, "create", "5", "--tag", "1") == 0
    assert await run_ctl(*ctl, "create", "other", "--tag", "5") == 0
    capsys.readouterr()
    assert await run_ctl(*ctl, "delete", "5") == 1
    err = capsys.readouterr().err
    assert err.startswith("csnapctl: delete refused: '5' is one snapshot's name and "
                          "another's tag: give the tag of the one named '5'")
    assert await run_ctl(*ctl, "delete", "1") == 0  # by tag: the one named "5"
    assert capsys.readouterr().out.startswith("deleted snapshot tag 1;")
    assert [s.name for s in fake.snaps.values()] == ["other"]


async def test_csnap_io_write_from_a_terminal_says_how_to_end(fake, devices):
    primary, secondary = pty.openpty()
    try:
        cmd = [sys.executable, "-m", "tools.csnap_io", "--volume", "origin", "write",
               "--offset", "8K"]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=secondary, stderr=subprocess.PIPE, env=csnap_io_env(fake, devices),
            cwd=ROOT)
        line = b""
        while not line.startswith(b"csnap-io:"):  # (the fake server draws a warning first)
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
        os.write(primary, b"typed\n\x04")  # a line, then one Ctrl-D ends it, as for cat
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        os.close(primary)
        os.close(secondary)
    assert line == b"csnap-io: writing what you type; end with Ctrl-D (or pipe the data in)\n"
    assert proc.returncode == 0, err
    with open(devices[0], "rb") as f:
        f.seek(8192)
        assert f.read(6) == b"typed\n"
