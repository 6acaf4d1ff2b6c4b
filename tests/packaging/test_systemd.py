"""The systemd units: `systemd-analyze verify` where systemd exists, and what they promise."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from csnapd.config import add_arguments
from csnapd.daemon import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "packaging" / "systemd"
INSTALLED = "/usr/local/bin/"


def unit_lines(text: str) -> dict[str, list[tuple[str, str]]]:
    """section -> [(key, value)] keeping repeated keys (configparser cannot)."""
    out: dict[str, list[tuple[str, str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        out[section].append((key.strip(), value.strip()))
    return out


def values(unit: dict, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}: {found}"
    return found[0]


def load(name: str, dropin: bool = False) -> dict:
    text = (UNITS / name).read_text()
    if dropin:
        text += "\n" + (UNITS / f"{name}.d" / "devices.conf.example").read_text()
    return unit_lines(text)


@pytest.mark.parametrize("name", ["csnapd.service", "csnap-nbd.service"])
def test_systemd_analyze_verify(tmp_path, name):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for script in ("csnapd", "csnap-nbd", "csnapctl"):  # verify checks ExecStart exists
        stub = bindir / script
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    text = (UNITS / name).read_text().replace(INSTALLED, f"{bindir}/")
    # the device drop-in, as systemd would merge it
    text += "\n" + (UNITS / f"{name}.d" / "devices.conf.example").read_text()
    unit = tmp_path / name
    unit.write_text(text)
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    proc = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60, env=env)
    # verify also reports problems in unrelated host units; keep only ours
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if name in line]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["csnapd.service", "csnap-nbd.service"])
def test_units_parse_as_ini(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string((UNITS / name).read_text())
    assert {"Unit", "Service", "Install"} <= set(parser.sections())


@pytest.mark.parametrize("name", ["csnapd.service", "csnap-nbd.service"])
def test_hardening_keeps_device_access(name):
    unit = load(name, dropin=True)
    svc = "Service"
    expect = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
              "ProtectHome": "yes", "DevicePolicy": "closed", "Restart": "on-failure",
              "User": "csnap", "SupplementaryGroups": "disk"}
    for key, value in expect.items():
        assert one(unit, svc, key) == value, key
    assert values(unit, svc, "ReadWritePaths"), "file-backed stores need a writable path"
    # PrivateDevices would hide the block devices from the service
    assert values(unit, svc, "PrivateDevices") in ([], ["no"])
    allowed = values(unit, svc, "DeviceAllow")
    assert len(allowed) >= 2 and all(a.startswith("/dev/") for a in allowed)
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_csnapd_unit_paths_and_command():
    unit = load("csnapd.service")
    assert one(unit, "Service", "RuntimeDirectory") == "csnapd"
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[0] == INSTALLED + "csnapd"
    parser = build_parser()
    add_arguments(parser)
    args = parser.parse_args([*argv[1:], "--store", "s", "--origin", "o"])
    assert args.control == "/run/csnapd/control.sock"  # RuntimeDirectory=csnapd
    assert args.config == "/etc/csnap/csnapd.toml"
    # usage errors; a device replaced under csnapd (daemon.EXIT_DEVICE_CHANGED)
    assert one(unit, "Service", "RestartPreventExitStatus") == "2 3"


def test_csnapd_store_drop_in_allows_writes():
    unit = load("csnapd.service", dropin=True)
    modes = [a.split()[-1] for a in values(unit, "Service", "DeviceAllow")]
    assert "rw" in modes


def test_nbd_unit_runs_the_documented_command():
    unit = load("csnap-nbd.service")
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[0] == INSTALLED + "csnap-nbd"
    opts = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert set(opts) == {"--server", "--origin", "--store", "--listen"}
    env_file = one(unit, "Service", "EnvironmentFile")
    sample = (ROOT / "packaging" / "csnap-nbd.env").read_text()
    for value in opts.values():
        var = value.strip("${}")
        assert f"\n{var}=" in f"\n{sample}", f"{var} is not in the sample {env_file}"
    unit = load("csnap-nbd.service", dropin=True)
    assert all(a.split()[-1] == "rw" for a in values(unit, "Service", "DeviceAllow"))


def test_nbd_unit_command_parses_with_csnap_nbd():
    csnap_nbd = pytest.importorskip("csnap_nbd.cli", reason="csnap-nbd is not there yet")
    argv = shlex.split(one(load("csnap-nbd.service"), "Service", "ExecStart"))
    env = dict(line.split("=", 1) for line in
               (ROOT / "packaging" / "csnap-nbd.env").read_text().splitlines()
               if line and not line.startswith("#"))
    expanded = [env.get(a.strip("${}"), a) if a.startswith("${") else a for a in argv[1:]]
    args = csnap_nbd.build_parser().parse_args(expanded)
    assert (args.server, args.listen) == (env["CSNAP_SERVER"], env["CSNAP_NBD_LISTEN"])
    assert (args.origin, args.store) == (env["CSNAP_ORIGIN"], env["CSNAP_STORE"])


def test_sysusers_creates_the_unit_user():
    text = (UNITS / "csnap.sysusers").read_text()
    assert any(line.split()[:2] == ["u", "csnap"] for line in text.splitlines())
    assert any(line.split()[:3] == ["m", "csnap", "disk"] for line in text.splitlines())
