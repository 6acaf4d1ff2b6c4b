"""Progress: tqdm's bar on a terminal, a plain line per tenth elsewhere, nothing when quiet."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from tools.progress import Progress

BIN = Path(sys.executable).parent


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drive(progress: Progress, total: int) -> None:
    for done in range(1, total + 1):
        progress(done, total)
    progress.finish()


def test_off_a_terminal_one_line_per_tenth():
    out = io.StringIO()
    drive(Progress("checking", stream=out), 5)
    assert out.getvalue().splitlines() == [f"checking: {p}% ({p // 20}/5)"
                                           for p in (20, 40, 60, 80, 100)]
    out = io.StringIO()
    drive(Progress("checking", stream=out), 1000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1] == "checking: 100% (1000/1000)"
    assert "\r" not in out.getvalue()


def test_quiet_writes_nothing():
    for stream in (io.StringIO(), Terminal()):
        drive(Progress("checking", stream=stream, quiet=True), 50)
        assert stream.getvalue() == ""


def test_on_a_terminal_the_bar_is_tqdm():
    term = Terminal()
    drive(Progress("initialising", stream=term), 5)
    text = term.getvalue()
    assert "\r" in text and text.endswith("\n")
    last = text.rstrip("\n").split("\r")[-1]
    assert last.startswith("initialising: 100%") and "5/5" in last and "step/s" in last


def test_csnap_init_progress_in_a_log_and_on_a_terminal(tmp_path):
    store, origin = tmp_path / "store.img", tmp_path / "origin.img"
    for path, size in ((store, 32 << 20), (origin, 8 << 20)):
        with open(path, "wb") as f:
            f.truncate(size)
    logged = subprocess.run([str(BIN / "csnap-init"), "--store", str(store), "--origin",
                             str(origin)], capture_output=True, text=True, timeout=60)
    assert logged.returncode == 0
    assert logged.stderr.splitlines()[-1].startswith("initialising: 100% (")
    assert "\r" not in logged.stderr and logged.stdout.startswith("created store")
    shown = on_a_terminal([str(BIN / "csnap-init"), "--store", str(store), "--origin",
                           str(origin), "--force"])
    assert "initialising: 100%" in shown and "step/s" in shown


def on_a_terminal(cmd: list[str]) -> str:
    """Run ``cmd`` with stderr on a pseudo-terminal; return what it drew there."""
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=secondary)
    os.close(secondary)
    chunks = []
    try:
        while True:
            try:
                data = os.read(primary, 4096)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(primary)
    assert proc.wait(60) == 0
    return b"".join(chunks).decode()
