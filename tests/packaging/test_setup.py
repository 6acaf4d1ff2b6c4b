"""./setup.sh installs only when something it depends on changed; ./run.sh then starts at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def current() -> bool:
    """True if this checkout's .venv was installed by setup.sh and nothing changed since."""
    return subprocess.run([str(ROOT / "setup.sh"), "--check"], timeout=60).returncode == 0


def needs_current_install() -> None:
    if not current():
        pytest.skip("this .venv is not a current ./setup.sh install (run ./setup.sh)")


def test_a_current_install_is_left_alone_quickly():
    needs_current_install()
    start = time.monotonic()
    r = subprocess.run([str(ROOT / "setup.sh")], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", r.stdout + r.stderr
    assert elapsed < 5, elapsed  # ~0.1 s idle; generous for a loaded CI machine


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """setup.sh, pyproject.toml and two package directories, without a .venv."""
    shutil.copy(ROOT / "setup.sh", tmp_path / "setup.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for pkg in ("csnapd", "tools"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    return tmp_path


def stamp(where: Path) -> str:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([str(where / "setup.sh"), "--print-stamp"], capture_output=True,
                          text=True, timeout=60, check=True, env=env).stdout.strip()


def test_the_stamp_changes_with_what_the_install_depends_on(copy):
    first = stamp(copy)
    assert len(first) == 64 and stamp(copy) == first
    (copy / "tools" / "new_module.py").write_text("x = 1\n")  # code: editable, no reinstall
    assert stamp(copy) == first
    pyproject = (copy / "pyproject.toml").read_text()
    (copy / "pyproject.toml").write_text(pyproject.replace('"msgpack>=1.0"', '"msgpack>=1.1"'))
    changed_dep = stamp(copy)
    assert changed_dep != first
    (copy / "newpkg").mkdir()
    (copy / "newpkg" / "__init__.py").write_text("")  # a new package: the finder must know
    assert stamp(copy) != changed_dep
    with open(copy / "setup.sh", "a") as f:
        f.write("# changed\n")
    assert stamp(copy) not in (first, changed_dep)


def test_check_installs_nothing_and_says_an_install_is_needed(copy):
    r = subprocess.run([str(copy / "setup.sh"), "--check"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and not (copy / ".venv").exists()
    bad = subprocess.run([str(copy / "setup.sh"), "--fast"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_run_sh_serves_at_once_when_nothing_changed(tmp_path):
    needs_current_install()
    from tests.integration.conftest import free_port
    port = free_port()
    env = {**os.environ, "CSNAP_DATA": str(tmp_path / "data"), "CSNAP_ORIGIN_SIZE": "64M",
           "CSNAP_STORE_SIZE": "128M", "CSNAP_LISTEN": f"127.0.0.1:{port}"}
    log = tmp_path / "run.log"
    for _ in ("first", "second"):  # the first one also makes the files
        start = time.monotonic()
        with open(log, "w") as out:
            proc = subprocess.Popen([str(ROOT / "run.sh")], stdout=out, stderr=out, env=env)
        try:
            while "msg=\"serving" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() - start < 60, log.read_text()
                time.sleep(0.05)
            served = time.monotonic() - start
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log.read_text()
        assert "setup:" not in text and "Warning" not in text, text
    assert served < 10, served  # about 1 s on an idle machine: no reinstall
    assert "store closed cleanly" in text
    assert not (tmp_path / "data" / "csnapd.sock").exists()
