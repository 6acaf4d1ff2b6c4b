"""The reliability figures reach the end of a pytest run, with and without xdist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TESTS = '''
def test_states(show_figure):
    show_figure("crash states tried: 12, failures: 0")

def test_fuzz(show_figure):
    show_figure("fuzz inputs tried: 7, server deaths: 0")

def test_broken(show_figure):
    show_figure("kill cycles: 1, lost: 3")
    assert False

def test_no_figure():
    pass
'''


@pytest.mark.parametrize("workers", [None, "2"])
def test_figures_are_a_summary_section_and_a_file(tmp_path, workers):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n')
    (tmp_path / "conftest.py").write_text(
        "from tests.figures import pytest_configure, show_figure  # noqa: F401\n")
    (tmp_path / "test_it.py").write_text(TESTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if workers:
        cmd += ["-n", workers]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # test_broken fails
    out = r.stdout
    assert "warnings summary" not in out and "Warning" not in out
    section = out[out.index("= reliability figures ="):].splitlines()
    assert section[1:4] == ["test_it.py::test_broken [FAILED]: kill cycles: 1, lost: 3",
                            "test_it.py::test_fuzz: fuzz inputs tried: 7, server deaths: 0",
                            "test_it.py::test_states: crash states tried: 12, failures: 0"]
    assert section[4] == "(also written to test-results/figures.txt)"
    written = (tmp_path / "test-results" / "figures.txt").read_text().splitlines()
    assert written[0].startswith("# csnap reliability figures, ")
    assert written[1:] == section[1:4]
