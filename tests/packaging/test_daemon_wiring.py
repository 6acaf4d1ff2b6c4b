"""csnapd reads its TOML configuration and writes JSON logs (needs the daemon wiring).

Skipped while ``csnapd --help`` does not list ``--config`` / ``--log-format``.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.conftest import BIN, make_server

from .test_metrics import csnapd_has

pytestmark = pytest.mark.skipif(
    not (csnapd_has("--config") and csnapd_has("--log-format")),
    reason="csnapd has no --config/--log-format yet (daemon wiring pending)")


def test_config_file_alone_starts_the_server_and_flags_win(tmp_path):
    handle = make_server(tmp_path)
    handle.control.parent.mkdir(parents=True, exist_ok=True)
    conf = tmp_path / "csnapd.toml"
    conf.write_text(f'store = "{handle.store}"\norigin = "{handle.origin}"\n'
                    f'listen = "127.0.0.1:1"\ncontrol = "{handle.control}"\n'
                    f'log_format = "json"\nlease = 2\n')
    # the file names port 1; the flag overrides it with the real port
    log = open(tmp_path / "csnapd.log", "a")  # noqa: SIM115 - owned by the process
    handle.log = tmp_path / "csnapd.log"
    handle.proc = subprocess.Popen([str(BIN / "csnapd"), "--config", str(conf),
                                    "--listen", f"127.0.0.1:{handle.port}"],
                                   stdout=log, stderr=log)
    handle.wait_ready()
    assert handle.stop() == 0
    lines = [json.loads(line) for line in handle.log_text().splitlines()]
    assert any("store closed cleanly" in e["msg"] for e in lines)
    assert {"ts", "level", "logger", "msg"} <= set(lines[0])


def test_bad_config_key_exits_2_naming_it(tmp_path):
    conf = tmp_path / "csnapd.toml"
    conf.write_text('store = "s"\norigin = "o"\nmax_inflight = "many"\n')
    proc = subprocess.run([str(BIN / "csnapd"), "--config", str(conf)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "'max_inflight'" in proc.stderr
