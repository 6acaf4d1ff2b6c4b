"""What the command-line tools share: output into a closed pipe, and finding csnapd.

``csnapctl list | head`` or ``csnap-io ... read | head -c 10`` close the pipe early;
the reader has seen enough, so that is not an error and must not end in a traceback.

When a tool cannot reach csnapd, the first question is whether csnapd runs at all, and
if it does, where it listens: :func:`running_servers` answers it from ``/proc`` (the
command lines of csnapd processes this user can see), so the error message can say
"csnapd is not running" or "csnapd (pid 812) listens on ... with --control ...".
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: csnapd's defaults, as its options module has them (not imported: the client-side
#: tools must not import csnapd).
CSNAPD_DEFAULT_LISTEN = "127.0.0.1:4270"
CSNAPD_DEFAULT_CONTROL = "/run/csnapd/control.sock"
#: csnapd processes named in one message at most.
MAX_SHOWN = 3


def run_main(main: Callable[[], int]) -> int:
    """Run a tool's main; a closed stdout (``| head``) ends it quietly with status 0.

    Every console script's ``main`` goes through this, so none of them ends in a
    BrokenPipeError traceback when its reader stops early.
    """
    try:
        status = main()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that is silent.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


@dataclass(frozen=True)
class RunningServer:
    """A csnapd process found in /proc, with the addresses its command line gives.

    ``listen`` and ``control`` are None when the command line does not say (a
    configuration file may set them; ``config`` is then the file, when given).
    """

    pid: int
    listen: str | None
    control: str | None
    config: str | None
    cwd: str | None

    def describe(self) -> str:
        """``csnapd (pid 812) listening on 127.0.0.1:4270, control socket ...``."""
        control = self.control_path()
        parts = [f"listening on {self.listen}" if self.listen else "",
                 f"control socket {control}" if control else ""]
        said = ", ".join(p for p in parts if p)
        if not said and self.config:
            said = f"configured by {self.config}"
        return f"csnapd (pid {self.pid})" + (f" {said}" if said else "")

    def control_path(self) -> str | None:
        """The control socket as a path usable from here (relative ones resolved)."""
        if self.control is None or os.path.isabs(self.control) or self.cwd is None:
            return self.control
        return os.path.join(self.cwd, self.control)


def _option(argv: list[str], name: str) -> str | None:
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _is_csnapd(argv: list[str]) -> int | None:
    """Index in ``argv`` after the csnapd program name, or None if this is not csnapd."""
    for i, arg in enumerate(argv[:3]):
        base = os.path.basename(arg)
        if base == "csnapd" or (arg == "-m" and i + 1 < len(argv)
                                and argv[i + 1] == "csnapd.daemon"):
            return i + 1 if base == "csnapd" else i + 2
    return None


def running_servers(proc: str = "/proc") -> list[RunningServer]:
    """Every csnapd process visible in ``proc``, in pid order (best effort: never raises)."""
    found: list[RunningServer] = []
    for entry in _pids(proc):
        try:
            raw = (Path(proc) / entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        start = _is_csnapd(argv)
        if start is None:
            continue
        args = argv[start:]
        if "--help" in args or "-h" in args or "--version" in args:
            continue
        try:
            cwd: str | None = os.readlink(Path(proc) / entry / "cwd")
        except OSError:
            cwd = None
        config = _option(args, "--config")
        listen, control = _option(args, "--listen"), _option(args, "--control")
        if config is None:
            listen = listen or CSNAPD_DEFAULT_LISTEN
            control = control or CSNAPD_DEFAULT_CONTROL
        found.append(RunningServer(int(entry), listen, control, config or None, cwd))
    return found


def _pids(proc: str) -> Iterator[str]:
    try:
        names = os.listdir(proc)
    except OSError:
        return iter(())
    return iter(sorted((n for n in names if n.isdigit()), key=int))


def servers_hint(servers: list[RunningServer] | None = None) -> str:
    """One sentence on the csnapd processes running here, for a "cannot connect" error."""
    if servers is None:
        servers = running_servers()
    if not servers:
        return ("csnapd is not running on this host (no csnapd process is visible); start "
                "it, e.g. ./run.sh in a csnap checkout, or systemctl start csnapd")
    shown = "; ".join(s.describe() for s in servers[:MAX_SHOWN])
    more = f"; and {len(servers) - MAX_SHOWN} more" if len(servers) > MAX_SHOWN else ""
    return f"csnapd is running here: {shown}{more}"
