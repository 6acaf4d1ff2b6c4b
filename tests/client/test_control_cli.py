"""Control client and the csnapctl / csnap-io front ends (against the fake server)."""

import ast
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

import csnap_client
from csnap_client import protocol as P
from csnap_client.control import open_control
from tools import csnap_io, csnapctl

from .conftest import CS, pattern


async def test_control_client(fake):
    async with await open_control(fake.control_path) as ctl:
        info = await ctl.create("a", tag=5)
        assert info["name"] == "a" and info["tag"] == 5
        with pytest.raises(P.SnapshotExistsError):
            await ctl.create("a")
        assert [s["name"] for s in await ctl.list()] == ["a"]
        assert "store" in await ctl.status()
        assert await ctl.delete(5) is None
        with pytest.raises(P.UnknownSnapshotError):
            await ctl.delete("a")
        # several requests in flight on one socket
        res = await asyncio.gather(ctl.list(), ctl.status(), ctl.list())
        assert res[0] == [] and res[2] == []


async def run_ctl(*argv):
    return await asyncio.to_thread(csnapctl.main, list(argv))


async def test_csnapctl_human_and_json(fake, capsys):
    ctl = ("--control", fake.control_path)
    assert await run_ctl(*ctl, "create", "nightly", "--tag", "3") == 0
    assert "created snapshot 'nightly' tag 3" in capsys.readouterr().out
    assert await run_ctl(*ctl, "list") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["TAG", "NAME", "CREATED", "PRIO"]
    assert "nightly" in out
    assert await run_ctl(*ctl, "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["tag"] == 3
    assert await run_ctl(*ctl, "status") == 0
    out = capsys.readouterr().out
    assert "store:" in out and "clients: 0" in out
    assert await run_ctl(*ctl, "delete", "3") == 0  # digits: a tag
    assert "deleted" in capsys.readouterr().out
    assert await run_ctl(*ctl, "delete", "nightly") == 1
    err = capsys.readouterr().err
    assert err.startswith("csnapctl: delete failed: UNKNOWN_SNAPSHOT") and err.count("\n") == 1


def test_csnapctl_exit_codes(tmp_path, capsys, monkeypatch):
    assert csnapctl.main(["--control", str(tmp_path / "none.sock"), "list"]) == 3
    assert "cannot connect" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        csnapctl.main(["bogus"])
    assert e.value.code == 2
    assert csnapctl.main(["--control", "x", "create", "n", "--priority", "500"]) == 2
    monkeypatch.setenv("CSNAP_CONTROL", "/some/where.sock")
    assert csnapctl.default_control() == "/some/where.sock"
    monkeypatch.delenv("CSNAP_CONTROL")
    assert csnapctl.default_control() in (csnapctl.SYSTEM_SOCKET, csnapctl.LOCAL_SOCKET)


def test_csnapctl_help_documents_socket(capsys):
    with pytest.raises(SystemExit):
        csnapctl.main(["--help"])
    out = capsys.readouterr().out
    assert "CSNAP_CONTROL" in out and "/run/csnapd/control.sock" in out


async def test_csnap_io_against_fake(fake, devices):
    env = {"CSNAP_SERVER": f"127.0.0.1:{fake.port}", "CSNAP_ORIGIN": devices[0],
           "CSNAP_STORE": devices[1], "PATH": "/usr/bin:/bin"}
    root = str(Path(__file__).resolve().parents[2])
    base = [sys.executable, "-m", "tools.csnap_io"]
    w = await asyncio.create_subprocess_exec(*base, "--volume", "origin", "write",
                                             "--offset", "8K", stdin=subprocess.PIPE,
                                             stderr=subprocess.PIPE, env=env, cwd=root)
    _, err = await w.communicate(b"hello world")
    assert w.returncode == 0, err
    r = await asyncio.create_subprocess_exec(*base, "--volume", "origin", "read", "--offset",
                                             "8K", "--length", "11", stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, env=env, cwd=root)
    out, err = await r.communicate()
    assert (r.returncode, out) == (0, b"hello world"), err
    r = await asyncio.create_subprocess_exec(*base, "--volume", "missing", "read",
                                             "--length", "1", stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, env=env, cwd=root)
    out, err = await r.communicate()
    assert r.returncode == 1 and b"UNKNOWN_SNAPSHOT" in err


def test_csnap_io_usage_errors(capsys):
    assert csnap_io.main(["--server", "nohost", "--volume", "origin", "--origin", "x",
                          "read", "--length", "1"]) == 2
    assert csnap_io.main(["--volume", "s", "--origin", "x", "--store", "", "read",
                          "--length", "1"]) == 2
    assert csnap_io.main(["--volume", "origin", "--origin", "x", "read",
                          "--length", "lots"]) == 2
    assert csnap_io.parse_server("[::1]:99") == ("::1", 99)
    assert csnap_io.volume_ref("12") == 12 and csnap_io.volume_ref("a1") == "a1"


def test_csnap_io_cannot_connect(capsys, devices):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert csnap_io.main(["--server", f"127.0.0.1:{port}", "--volume", "origin",
                          "--origin", devices[0], "read", "--length", "1"]) == 3


def test_client_package_never_imports_csnapd():
    pkg = Path(csnap_client.__file__).parent
    for path in [*pkg.glob("*.py"), Path(csnapctl.__file__), Path(csnap_io.__file__)]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            assert not any(n.split(".")[0] == "csnapd" for n in names), path
    code = "import sys, csnap_client, tools.csnapctl, tools.csnap_io; print('csnapd' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=str(pkg.parent)).stdout.strip()
    assert out == "False"


def test_pattern_helper_sane():
    assert len(pattern(3)) == CS
